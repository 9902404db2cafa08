"""A TopK SAE (sae-lens `TopKTrainingSAE`) trained by a short loop over collected activations,
and the quality measures written beside it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm import tqdm


@dataclass(frozen=True)
class TrainConfig:
    d_sae: int
    k: int
    epochs: int = 3
    batch_size: int = 2048
    lr: float = 5e-4
    warmup_share: float = 0.05
    decay_share: float = 0.3  # linear decay to zero over the last share of steps
    dead_window: int = 20_000  # a latent unseen for this many tokens gets the auxiliary loss
    aux_loss_coefficient: float = 1.0
    seed: int = 0
    bf16_autocast: bool = True  # bf16 matmuls, float32 weights (about 2x faster on CPUs with bf16)


def _lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    warmup = max(1, int(total * cfg.warmup_share))
    decay_from = int(total * (1 - cfg.decay_share))
    if step < warmup:
        return (step + 1) / warmup
    if step >= decay_from:
        return max(0.0, (total - step) / max(1, total - decay_from))
    return 1.0


def train_topk_sae(acts: torch.Tensor, cfg: TrainConfig, hook_name: str, model_name: str):
    """Train on `acts` [N, d_model]; returns the sae-lens TopKTrainingSAE with the input scaling
    folded in, so it takes raw residuals. Inputs are scaled to mean norm sqrt(d_model) while
    training (what sae-lens's `expected_average_only_in` does)."""
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import SAEMetadata, TrainStepInput

    torch.manual_seed(cfg.seed)
    n, d_in = acts.shape
    sample = acts[torch.randperm(n)[: min(n, 50_000)]].float()
    scale = math.sqrt(d_in) / float(sample.norm(dim=-1).mean())
    sae = TopKTrainingSAE(
        TopKTrainingSAEConfig(
            d_in=d_in,
            d_sae=cfg.d_sae,
            k=cfg.k,
            aux_loss_coefficient=cfg.aux_loss_coefficient,
            metadata=SAEMetadata(hook_name=hook_name, model_name=model_name),
        )
    )
    with torch.no_grad():
        sae.b_dec.copy_((sample * scale).mean(0))
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total, cfg))
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    gen = torch.Generator().manual_seed(cfg.seed)
    sae.train()
    with tqdm(total=total, desc="training SAE", unit="step") as bar:
        for epoch in range(cfg.epochs):
            order = torch.randperm(n, generator=gen)
            for s in range(steps_per_epoch):
                x = acts[order[s * cfg.batch_size : (s + 1) * cfg.batch_size]].float() * scale
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=cfg.bf16_autocast):
                    out = sae.training_forward_pass(
                        TrainStepInput(x, {}, since_fired >= cfg.dead_window, bar.n, False)
                    )
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    fired = (out.feature_acts > 0).any(0)
                    since_fired += x.shape[0]
                    since_fired[fired] = 0
                    ev = 1 - (out.sae_out.float() - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
                bar.set_postfix(epoch=epoch + 1, mse=f"{out.losses['mse_loss'].item():.1f}", ev=f"{ev.item():.3f}")
                bar.update(1)
    sae.eval()
    sae.fold_activation_norm_scaling_factor(scale)
    return sae


@torch.inference_mode()
def ce_loss_recovered(model, docs: list[dict], layer: int, encode, decode, max_norm: float) -> dict[str, float]:
    """Next-token loss over the kept positions of `docs` with the layer output as is, replaced by
    the SAE reconstruction, and zeroed; recovered = (zero - sae) / (zero - clean)."""
    from esr_eval.steering.hooks import decoder_layers

    mode = {"now": "clean"}

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        if mode["now"] != "clean":
            x = h.float()
            keep = x.norm(dim=-1, keepdim=True) <= max_norm
            keep[:, : mode["skip"]] = False
            new = decode(encode(x)) if mode["now"] == "sae" else torch.zeros_like(x)
            h = torch.where(keep, new, x).to(h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    device = next(model.parameters()).device
    totals = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n = 0
    try:
        for d in tqdm(docs, desc="CE loss recovered", unit="doc"):
            ids = torch.tensor([d["ids"]], device=device)
            mode["skip"] = d["skip"]
            targets = ids[0, d["skip"] + 1 :]
            for now in totals:
                mode["now"] = now
                logits = model(input_ids=ids, use_cache=False).logits[0, d["skip"] : -1].float()
                totals[now] += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
            n += targets.numel()
    finally:
        handle.remove()
    loss = {k: v / max(1, n) for k, v in totals.items()}
    recovered = (loss["zero"] - loss["sae"]) / (loss["zero"] - loss["clean"])
    return {"ce_loss_clean": loss["clean"], "ce_loss_sae": loss["sae"], "ce_loss_zero": loss["zero"],
            "ce_loss_recovered": recovered, "ce_tokens": n}


@torch.no_grad()
def quality(encode, decode, acts: torch.Tensor, batch: int = 8192) -> dict[str, float]:
    """Explained variance 1 - SSE/SST over the whole set (SST about the set's mean), mean L0,
    and the fraction of latents that never fire on it."""
    mean = acts.float().mean(0)
    sse = sst = l0 = 0.0
    fired = None
    for start in range(0, acts.shape[0], batch):
        x = acts[start : start + batch].float()
        f = encode(x)
        sse += float((decode(f) - x).pow(2).sum())
        sst += float((x - mean).pow(2).sum())
        l0 += float((f > 0).sum())
        hit = (f > 0).any(0)
        fired = hit if fired is None else fired | hit
    n = acts.shape[0]
    return {
        "explained_variance": 1 - sse / sst,
        "l0": l0 / n,
        "dead_fraction": float(1 - fired.float().mean()) if fired is not None else 1.0,
        "n_tokens": n,
    }
