"""`esr-eval make-finetune-data` and `esr-eval finetune`."""

from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

from esr_eval.cli.common import DTYPES, check_latents_fit, latent_indices
from esr_eval.config import (
    DATA_GENERATION_DTYPE,
    DEFAULT_MODEL_NAME,
    FULL_PRECISION_DTYPE,
    GENERATION,
    OFFLINE_GRADER,
    LoraSettings,
    SteeredDataSettings,
)


def _make_steered_data(args: argparse.Namespace) -> int:
    from esr_eval.config import int_list
    from esr_eval.errors import UsageError
    from esr_eval.files import atomic_write_jsonl
    from esr_eval.sampling.latents import offline_concreteness, sample_latents
    from esr_eval.sampling.prompts import prompt_texts
    from esr_eval.steering.load import load_engine
    from esr_eval.training.finetune.data import training_prompts
    from esr_eval.training.finetune.steered import make_steered_rows

    settings = SteeredDataSettings(
        n=args.n, correction_share=args.correction_share, steered_share=args.steered_share, n_latents=args.n_latents,
        derail_scale=tuple(args.derail_scale), mild_scale=tuple(args.mild_scale), drift_tokens=tuple(args.drift_tokens),
        answer_tokens=args.max_tokens, seed=args.seed,
    )  # fmt: skip
    settings.check()
    if not str(args.out).endswith(".jsonl"):
        raise UsageError(f"--out {args.out}: the rows are written as jsonl, name the file *.jsonl")
    prompts = training_prompts(args.prompts)
    check_latents_fit(args, args.latents)
    engine = load_engine(args.model, args.dictionary, None, None, args.dtype, args.device)
    if engine.dictionary is None:
        raise UsageError("steered rows need a dictionary: use a preset or --dictionary")
    latents = int_list(args.latents)
    if latents is None:  # unrelated to the evaluation prompts, as the evaluation's latents are
        messages = [[{"role": "user", "content": p}] for p in prompt_texts()]
        concrete = offline_concreteness(engine.dictionary)
        latents = sample_latents(engine, settings.n_latents, messages, seed=settings.seed + 1, concreteness=concrete).latents
    for k in latents:
        engine.dictionary.check_latent(k)
    selection = make_steered_rows(engine, prompts, latents, settings, args.grader, args.batch_size)
    path = atomic_write_jsonl(args.out, selection.rows)
    kinds = ", ".join(f"{selection.kept[k]} {k} (of {selection.generated[k]} generated)" for k in selection.kept)
    print(f"wrote {len(selection.rows)} rows to {path}: {kinds}; training latents {sorted(latents)}")
    return 0


def _make_data(args: argparse.Namespace) -> int:
    if args.steered:
        return _make_steered_data(args)
    from esr_eval.errors import UsageError
    from esr_eval.files import atomic_write_jsonl
    from esr_eval.steering.load import load_unsteered_engine
    from esr_eval.training.finetune.data import (
        OFFTOPIC_FILE,
        OffTopicBank,
        make_datasets,
        plan_rows,
        ratio_path,
        training_prompts,
    )

    if not str(args.out).endswith(".jsonl"):
        raise UsageError(f"--out {args.out}: the rows are written as jsonl, name the file *.jsonl")
    ratios = list(dict.fromkeys(args.ratio))
    prompts = training_prompts(args.prompts)
    bank = OffTopicBank.load(args.subjects or OFFTOPIC_FILE)
    for ratio in ratios:
        plan_rows(prompts, args.n, ratio, bank, args.seed)  # validate before loading the model
    engine = load_unsteered_engine(args.model, args.dtype, args.device)
    datasets = make_datasets(
        engine, prompts, args.n, ratios, bank, args.seed, args.max_tokens, args.batch_size, args.temperature, args.writer
    )
    for ratio, rows in datasets.items():
        path = atomic_write_jsonl(ratio_path(args.out, ratio, len(ratios) > 1), rows)
        n_corr = sum(r["kind"] == "correction" for r in rows)
        print(f"wrote {len(rows)} rows ({n_corr} self-correction, ratio {n_corr / len(rows):.3f}) to {path}")
    return 0


def add_make_data(sub) -> None:
    p = sub.add_parser("make-finetune-data", help="write self-correction fine-tuning rows (jsonl)")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="preset, hub id or folder whose own answers are used")
    p.add_argument("--prompts", help="prompt file (.txt, .jsonl or .csv); default: the packaged training prompts")
    p.add_argument("--n", type=int, default=SteeredDataSettings.n, help="number of rows")
    p.add_argument(
        "--ratio", type=float, nargs="+", default=[0.5],
        help="share of self-correction rows, floor(n*ratio+0.5); several ratios share one set of answers "
        "and write OUT-rNN.jsonl each",
    )
    p.add_argument("--out", required=True, help="output .jsonl")
    p.add_argument("--writer", help="Inspect model that writes the off-topic passages (default: templates)")
    p.add_argument("--subjects", help="off-topic subjects / recovery lines JSON (default: the packaged bank)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=200, help="answer length budget")
    p.add_argument("--temperature", type=float, default=GENERATION.temperature)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default=DATA_GENERATION_DTYPE, choices=DTYPES)
    p.add_argument("--device", default="cpu")
    d = SteeredDataSettings
    steered = p.add_argument_group("steering-aware rows (--steered): the model's own drift under steering, a recovery line, a good answer")
    steered.add_argument("--steered", action="store_true", help="write steering-aware rows (each carries its steering)")
    steered.add_argument("--dictionary", help="SAE to steer (default: the model preset's)")
    steered.add_argument("--latents", type=latent_indices, help="comma-separated training latents (default: sample --n-latents)")
    steered.add_argument("--n-latents", type=int, default=d.n_latents)
    steered.add_argument("--correction-share", type=float, default=d.correction_share)
    steered.add_argument("--steered-share", type=float, default=d.steered_share, help="rows steered below the derailing boost, no restart")
    steered.add_argument("--derail-scale", type=float, nargs=2, default=list(d.derail_scale), metavar=("LOW", "HIGH"))
    steered.add_argument("--mild-scale", type=float, nargs=2, default=list(d.mild_scale), metavar=("LOW", "HIGH"))
    steered.add_argument("--drift-tokens", type=int, nargs=2, default=list(d.drift_tokens), metavar=("LOW", "HIGH"))
    steered.add_argument("--grader", default=OFFLINE_GRADER, help="Inspect model that judges drift (default: offline grader)")
    p.set_defaults(func=_make_data)


def _finetune(args: argparse.Namespace) -> int:
    from esr_eval.errors import UsageError
    from esr_eval.files import read_jsonl
    from esr_eval.training.finetune.train import (
        load_base,
        merge_and_save,
        save_adapter,
        train_lora,
    )

    settings = LoraSettings(
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        warmup_steps=args.warmup_steps,
        val_fraction=args.val_fraction,
        max_steps=args.max_steps,
        max_length=args.max_length,
        target_modules=tuple(m for m in args.target_modules.split(",") if m) if args.target_modules else None,
        seed=args.seed,
    )
    settings.check()
    fix = "write it with `esr-eval make-finetune-data`"
    rows = read_jsonl(args.data, "fine-tuning data", fix)
    if not rows:
        raise UsageError(f"{args.data} holds no rows: {fix}")
    bad = next((i for i, r in enumerate(rows, 1) if "segments" not in r or "messages" not in r), None)
    if bad is not None:
        raise UsageError(f"{args.data} line {bad} has no messages and segments: {fix}")
    dictionary = steered_rows_dictionary(rows, args)
    model, tokenizer, chat_template = load_base(args.model, args.dtype, args.device)
    checkpoint = Path(f"{args.out}.checkpoint")
    peft_model, metrics = train_lora(
        model, tokenizer, rows, settings, chat_template, dictionary=dictionary, checkpoint=checkpoint, resume=args.resume
    )
    metrics["base_model"] = args.model
    metrics["data"] = str(args.data)
    metrics["data_sha256"] = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()
    if args.adapter_only:
        save_adapter(peft_model, args.out, metrics)
    else:
        merge_and_save(peft_model, tokenizer, args.out, metrics)
    shutil.rmtree(checkpoint, ignore_errors=True)
    for e in metrics["epochs"]:
        val = "n/a" if e["val_loss"] is None else f"{e['val_loss']:.4f}"
        print(f"epoch {e['epoch']}: train loss {e['train_loss']:.4f}, val loss {val} ({e['steps']} steps)")
    if args.adapter_only:
        print(f"LoRA adapter written to {args.out}: point a preset's `adapter` at it to evaluate it")
    else:
        print(f"merged model written to {args.out}; evaluate it as steered/{args.out} -M dictionary={args.model}")
    return 0


def steered_rows_dictionary(rows: list[dict], args: argparse.Namespace):
    """The dictionary that steered rows index (the preset's, or --dictionary), checked against the
    id the rows were generated with; None when no row is steered."""
    from esr_eval.errors import UsageError
    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.steering.engine import SteeringEngine
    from esr_eval.steering.presets import get_preset

    ids = {r["steering"]["dictionary"] for r in rows if (r.get("steering") or {}).get("interventions")}
    if not ids:
        return None
    preset = get_preset(args.dictionary or args.model)
    spec = preset.dictionary if preset else args.dictionary
    if spec is None:
        raise UsageError(f"{args.data} holds steered rows: pass --dictionary (the SAE they were generated with)")
    dictionary = load_dictionary(spec)
    if ids != {SteeringEngine.dictionary_key(dictionary)}:
        raise UsageError(f"{args.data} was steered with {sorted(ids)}, but --dictionary gives {SteeringEngine.dictionary_key(dictionary)}: pass the same SAE")
    return dictionary


def add_finetune(sub) -> None:
    d = LoraSettings
    p = sub.add_parser("finetune", help="LoRA-tune a model on self-correction rows and save the merged model")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="preset, hub id or folder to tune")
    p.add_argument("--data", required=True, help="rows from `esr-eval make-finetune-data`")
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--alpha", type=int, default=d.alpha)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="effective batch per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size, help="rows per forward pass (gradient accumulation)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--target-modules", help="comma-separated module names (default: attention projections)")
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per row (longer rows are cut)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", default=FULL_PRECISION_DTYPE, choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dictionary", help="the SAE steered rows were generated with (default: the model preset's)")
    p.add_argument("--adapter-only", action="store_true", help="write the LoRA adapter alone (for a preset to ship), not a merged model")
    p.add_argument(
        "--resume", action="store_true",
        help="continue from OUT.checkpoint (written after every epoch) with the same data and settings",
    )  # fmt: skip
    p.set_defaults(func=_finetune)
