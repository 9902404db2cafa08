"""LoRA fine-tuning on self-correction rows (peft), then merge into a plain Hugging Face folder.

Defaults follow the paper: r 32, alpha 16, dropout 0.05, lr 2e-4, 4 epochs, effective batch 8
(micro-batches with gradient accumulation), 10 warm-up steps then linear decay, 5% validation.
Loss is the mean over labelled tokens of each optimizer step; the prompt and the off-topic
passage are labelled -100 (see `esr_eval.training.finetune.data.encode_row`).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from esr_eval.config import FULL_PRECISION_DTYPE, LoraSettings
from esr_eval.files import atomic_directory
from esr_eval.schema import FINETUNE_METRICS_FILE
from esr_eval.steering.dictionary import FeatureDictionary
from esr_eval.steering.hooks import BatchSteering, ResidualHooks, decoder_layers
from esr_eval.steering.intervention import Intervention
from esr_eval.training.finetune.data import encode_row
from esr_eval.training.finetune.steered import row_interventions

ATTENTION_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def attention_modules(model: torch.nn.Module) -> list[str]:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [m for m in ATTENTION_MODULES if m in present] or [m for m in ("c_attn", "query_key_value") if m in present]
    if not found:
        raise ValueError("cannot find attention projections in this model: pass --target-modules NAME,NAME")
    return found


def split_rows(rows: Sequence[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Shuffled train / validation split; validation gets floor(n * fraction + 0.5) rows."""
    order = list(rows)
    random.Random(seed).shuffle(order)
    n_val = min(int(math.floor(len(order) * val_fraction + 0.5)), len(order) - 1)
    return order[n_val:], order[:n_val]


@dataclass
class TrainingSteering:
    """Steering in the training forward pass: the hook on the model's layer and the dictionary the
    rows' interventions index (each row is steered as it was generated, at every position)."""

    hooks: ResidualHooks
    dictionary: FeatureDictionary

    @classmethod
    def attach(cls, model: torch.nn.Module, dictionary: FeatureDictionary) -> "TrainingSteering":
        dictionary.to(next(model.parameters()).device, torch.float32)
        return cls(ResidualHooks(decoder_layers(model)[dictionary.layer]), dictionary)

    def active(self, rows: Sequence[Sequence[Intervention]], dtype: torch.dtype):
        return self.hooks.active(BatchSteering.build(rows, self.dictionary, dtype))


def collate(encoded: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Right-padded input_ids, attention_mask and labels (-100 on padding), and each row's
    interventions (steered rows)."""
    width = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for b, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[b, :n] = torch.tensor(e["input_ids"])
        labels[b, :n] = torch.tensor(e["labels"])
        mask[b, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "interventions": [e.get("interventions", []) for e in encoded]}


def summed_loss(model, batch: dict[str, Any], steering: TrainingSteering | None = None) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over labelled positions, and their count; steered rows run
    with their steering on."""
    param = next(model.parameters())
    inputs = dict(input_ids=batch["input_ids"].to(param.device), attention_mask=batch["attention_mask"].to(param.device))
    if steering is not None and any(batch["interventions"]):
        with steering.active(batch["interventions"], param.dtype):
            logits = model(**inputs).logits
    else:
        logits = model(**inputs).logits
    targets = batch["labels"][:, 1:].to(param.device)
    loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return loss, int((targets != -100).sum())


@torch.no_grad()
def mean_loss(model, encoded: Sequence[dict[str, Any]], pad_id: int, batch_size: int = 8, steering: TrainingSteering | None = None) -> float:
    """Mean per-token loss over the labelled tokens of `encoded` (eval mode, no dropout)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        loss, n = summed_loss(model, collate(encoded[start : start + batch_size], pad_id), steering)
        total, count = total + float(loss), count + n
    model.train(was_training)
    return total / max(count, 1)


def encode_rows(tokenizer, rows: Sequence[dict], max_length: int, chat_template: bool) -> list[dict[str, Any]]:
    """Token ids and labels of each row that has a labelled token, with its interventions."""
    out = []
    for row in rows:
        e = encode_row(tokenizer, row, max_length, chat_template)
        if any(x != -100 for x in e["labels"]):
            out.append({**e, "interventions": row_interventions(row)})
    return out


CHECKPOINT_STATE = "trainer_state.pt"


def checkpoint_key(rows: Sequence[dict], settings: LoraSettings) -> str:
    """What a checkpoint was trained on: the rows and every setting (a resumed run must match)."""
    blob = json.dumps({"rows": list(rows), "settings": asdict(settings)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def save_checkpoint(peft_model, folder: Path, state: dict[str, Any]) -> None:
    """The adapter and the trainer's state after an epoch, in one rename."""
    with atomic_directory(folder) as tmp:
        peft_model.save_pretrained(tmp)
        torch.save(state, tmp / CHECKPOINT_STATE)


def load_checkpoint(peft_model, folder: Path, key: str) -> dict[str, Any]:
    """Load a checkpoint's adapter weights into `peft_model`; returns the trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from esr_eval.errors import UsageError

    if not (folder / CHECKPOINT_STATE).is_file():
        raise UsageError(f"--resume: no checkpoint in {folder}: drop --resume to start afresh")
    state = torch.load(folder / CHECKPOINT_STATE, weights_only=False)
    if state["key"] != key:
        raise UsageError(f"--resume: {folder} was trained on other rows or settings: pass the same ones, or drop --resume")
    set_peft_model_state_dict(peft_model, load_file(folder / "adapter_model.safetensors"))
    return state


def train_lora(
    model,
    tokenizer,
    rows: Sequence[dict],
    settings: LoraSettings,
    chat_template: bool = True,
    progress: bool = True,
    dictionary: FeatureDictionary | None = None,
    checkpoint: Path | None = None,
    resume: bool = False,
):
    """Wrap `model` with LoRA adapters and train them on `rows`; returns (peft model, metrics).
    Rows that carry steering (`esr-eval make-finetune-data --steered`) need the `dictionary` it
    indexes; they are trained with it on, and the adapters sit only on the layers after the
    steering layer, so the residual the dictionary reads (and steers) stays the base model's.
    With `checkpoint`, the adapter and optimizer state are written there after every epoch, and
    `resume` continues from the last one written (long runs in pieces)."""
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm
    from transformers import get_linear_schedule_with_warmup

    settings.check()
    torch.manual_seed(settings.seed)
    train_rows, val_rows = split_rows(rows, settings.val_fraction, settings.seed)
    train_set = encode_rows(tokenizer, train_rows, settings.max_length, chat_template)
    val_set = encode_rows(tokenizer, val_rows, settings.max_length, chat_template)
    if not train_set:
        raise ValueError("no training row has a labelled token: raise --max-length or check the data file")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    steered = any(e["interventions"] for e in train_set)
    if steered and dictionary is None:
        raise ValueError("the rows carry steering: pass the dictionary they were generated with")
    steering = TrainingSteering.attach(model, dictionary) if steered and dictionary is not None else None
    targets = list(settings.target_modules or attention_modules(model))
    layers = list(range(dictionary.layer + 1, len(decoder_layers(model)))) if steered and dictionary is not None else None
    lora = LoraConfig(
        r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, target_modules=targets,
        layers_to_transform=layers, task_type="CAUSAL_LM",
    )  # fmt: skip
    model = get_peft_model(model, lora)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr)
    steps_per_epoch = math.ceil(len(train_set) / settings.batch_size)
    total_steps = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, min(settings.warmup_steps, total_steps), total_steps)

    step_losses: list[float] = []
    epochs: list[dict[str, Any]] = []
    step = 0
    key = checkpoint_key(rows, settings)
    if resume:
        if checkpoint is None:
            raise ValueError("resume needs a checkpoint folder")
        state = load_checkpoint(model, checkpoint, key)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, step_losses, epochs = state["step"], state["step_losses"], state["epochs"]
    bar = tqdm(total=total_steps, initial=step, desc="lora", unit="step", disable=not progress)
    for epoch in range(len(epochs), settings.epochs):
        if step >= total_steps:
            break
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(settings.seed + epoch)).tolist()
        epoch_losses = []
        for start in range(0, len(order), settings.batch_size):
            if step >= total_steps:
                break
            chunk = [train_set[i] for i in order[start : start + settings.batch_size]]
            n_tokens = sum(sum(x != -100 for x in e["labels"][1:]) for e in chunk)
            step_loss = 0.0
            for m in range(0, len(chunk), settings.micro_batch_size):
                loss, _ = summed_loss(model, collate(chunk[m : m + settings.micro_batch_size], pad_id), steering)
                (loss / max(n_tokens, 1)).backward()
                step_loss += float(loss.detach()) / max(n_tokens, 1)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            step_losses.append(step_loss)
            epoch_losses.append(step_loss)
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{step_loss:.3f}")
        record: dict[str, float | None] = {"epoch": epoch + 1, "steps": len(epoch_losses), "train_loss": sum(epoch_losses) / len(epoch_losses)}
        record["val_loss"] = mean_loss(model, val_set, pad_id, settings.micro_batch_size, steering) if val_set else None
        epochs.append(record)
        if checkpoint is not None:
            state = dict(key=key, step=step, step_losses=step_losses, epochs=epochs, rng=torch.get_rng_state())
            save_checkpoint(model, checkpoint, {**state, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()})
    bar.close()
    if steering is not None:
        steering.hooks.remove()
    n_corr = sum(r.get("kind") == "correction" for r in rows)
    metrics = {
        "settings": {**asdict(settings), "target_modules": targets, "layers_to_transform": layers},
        "recipe": "steered self-correction" if steered else "self-correction",
        "training_latents": sorted({iv.latent for e in train_set + val_set for iv in e["interventions"]}),
        "rows": len(rows),
        "correction_rows": n_corr,
        "mixing_ratio": n_corr / len(rows),
        "train_rows": len(train_set),
        "val_rows": len(val_set),
        "optimizer_steps": step,
        "epochs": epochs,
        "step_losses": step_losses,
    }
    return model, metrics


def model_card(metrics: dict[str, Any]) -> str:
    """The README written beside the weights: recipe, data and its hash, hyper-parameters, losses
    and training latents, read from the metrics `train_lora` returns."""
    settings = metrics.get("settings", {})
    lines = [
        f"# {metrics.get('recipe', 'self-correction')} LoRA on {metrics.get('base_model', 'its base model')}",
        "",
        "Written by `esr-eval finetune`; every figure below is also in `finetune_metrics.json`.",
        "",
        f"- data: `{metrics.get('data')}`, sha256 `{metrics.get('data_sha256')}`",
        f"- rows: {metrics.get('rows')} ({metrics.get('correction_rows')} with a restart); "
        f"train {metrics.get('train_rows')}, validation {metrics.get('val_rows')}",
        f"- optimizer steps: {metrics.get('optimizer_steps')}",
        f"- training latents (never steered in an evaluation of this model): {metrics.get('training_latents')}",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in settings.items()),
        "",
        "| epoch | steps | train loss | validation loss |",
        "|---|---|---|---|",
    ]
    for e in metrics.get("epochs", []):
        val = "n/a" if e.get("val_loss") is None else f"{e['val_loss']:.4f}"
        lines.append(f"| {e['epoch']} | {e['steps']} | {e['train_loss']:.4f} | {val} |")
    return "\n".join(lines) + "\n"


def write_metrics(folder: Path, metrics: dict[str, Any]) -> None:
    (folder / FINETUNE_METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    (folder / "README.md").write_text(model_card(metrics))


def merge_and_save(peft_model, tokenizer, out: str | Path, metrics: dict[str, Any]) -> Path:
    """Fold the adapters into the weights and write model + tokenizer + metrics in one rename."""
    merged = peft_model.merge_and_unload()
    merged.eval()
    with atomic_directory(out) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_metrics(tmp, metrics)
    return Path(out)


def load_base(model: str, dtype: str = FULL_PRECISION_DTYPE, device: str = "cpu"):
    """(model, tokenizer, uses_chat_template) for a preset, hub id or folder."""
    from esr_eval.steering.models import apply_adapter, load_causal_lm
    from esr_eval.steering.presets import get_preset

    preset = get_preset(model)
    lm, tokenizer = load_causal_lm(preset.model_source() if preset else model, dtype=dtype, device=device)
    if preset and preset.adapter:
        lm = apply_adapter(lm, preset.adapter)
    return lm, tokenizer, preset.chat_template if preset else True


def save_adapter(peft_model, out: str | Path, metrics: dict[str, Any]) -> Path:
    """Write only the LoRA adapter (a few MB) and the metrics, for a preset to ship; the base
    model comes from its own package."""
    with atomic_directory(out) as tmp:
        peft_model.save_pretrained(tmp)  # peft's own README template is replaced by the card
        write_metrics(tmp, metrics)
    return Path(out)
