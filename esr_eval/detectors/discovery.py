"""Off-topic detectors (OTD): latents that fire when an answer does not fit its prompt.

Discovery: unsteered answers to a prompt set; each prompt is paired with its own answer
(matched) and, by a derangement, with another prompt's answer (mismatched); a latent's
activation over an answer is its max over the answer's tokens. Detectors separate mismatched
from matched pairs.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from esr_eval.config import GENERATION
from esr_eval.detectors import RULES
from esr_eval.files import write_png
from esr_eval.schema import DetectorsFile, PromptSetRecord
from esr_eval.steering.engine import GenerationRequest, SteeringEngine


def derangement(n: int, rng: random.Random) -> list[int]:
    """A uniformly drawn permutation with no fixed point (rejection sampling, about e tries)."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 prompts")
    while True:
        perm = list(range(n))
        rng.shuffle(perm)
        if all(i != p for i, p in enumerate(perm)):
            return perm


@dataclass
class LatentStats:
    latent: int
    auc: float
    cohens_d: float
    active_mismatched: float
    active_matched: float
    label: str | None = None


def separation_stats(mismatched: np.ndarray, matched: np.ndarray) -> dict[str, np.ndarray]:
    """Per latent (columns): AUC of mismatched over matched (ties count half), Cohen's d, and the
    share of pairs where the latent is active in each group."""
    n1, n2 = len(mismatched), len(matched)
    ranks = rankdata(np.concatenate([mismatched, matched]), axis=0)
    auc = (ranks[:n1].sum(0) - n1 * (n1 + 1) / 2) / (n1 * n2)
    pooled = np.sqrt(((n1 - 1) * mismatched.var(0, ddof=1) + (n2 - 1) * matched.var(0, ddof=1)) / (n1 + n2 - 2))
    diff = mismatched.mean(0) - matched.mean(0)
    d = np.divide(diff, pooled, out=np.zeros_like(diff), where=pooled > 0)
    return {"auc": auc, "cohens_d": d, "active_mismatched": (mismatched > 0).mean(0), "active_matched": (matched > 0).mean(0)}


def select_detectors(stats: dict[str, np.ndarray], rule: str = "strict", min_auc: float = 0.95, min_active: float = 0.8) -> list[int]:
    """strict: never active on matched pairs and active on >= min_active of mismatched ones;
    auc: AUC >= min_auc and active on >= min_active of mismatched pairs."""
    if rule not in RULES:
        raise ValueError(f"detector rule {rule!r} is unknown: use one of {RULES}")
    active = stats["active_mismatched"] >= min_active
    keep = active & (stats["active_matched"] == 0) if rule == "strict" else active & (stats["auc"] >= min_auc)
    return [int(k) for k in np.nonzero(keep)[0]]


def answer_activations(lm: SteeringEngine, pairs: Sequence[tuple[str, str]], batch_size: int = 8) -> list[torch.Tensor]:
    """Per-token activations [answer_tokens, d_sae] over the answer of each (prompt, answer)."""
    return lm.read_latents([([{"role": "user", "content": p}], a) for p, a in pairs], batch_size=batch_size)


def max_over_tokens(acts: list[torch.Tensor], width: int) -> np.ndarray:
    return torch.stack([a.amax(0) if len(a) else torch.zeros(width) for a in acts]).numpy()


def discover(lm: SteeringEngine, prompts: list[str], answers: list[str], seed: int = 0, rule: str = "strict", min_auc: float = 0.95) -> tuple[list[int], list[LatentStats], np.ndarray, np.ndarray]:
    """Detectors, stats for every latent, AUCs, and each latent's firing frequency over the
    matched answers' tokens (for matched random controls)."""
    width = lm.primary_dictionary().d_sae
    perm = derangement(len(prompts), random.Random(seed))
    matched_acts = answer_activations(lm, list(zip(prompts, answers)))
    matched = max_over_tokens(matched_acts, width)
    mismatched = max_over_tokens(answer_activations(lm, [(prompts[i], answers[perm[i]]) for i in range(len(prompts))]), width)
    tokens = torch.cat([a for a in matched_acts if len(a)])
    frequency = (tokens > 0).float().mean(0).numpy()
    stats = separation_stats(mismatched, matched)
    chosen = select_detectors(stats, rule, min_auc)
    labels = lm.primary_dictionary().labels
    rows = [
        LatentStats(k, float(stats["auc"][k]), float(stats["cohens_d"][k]), float(stats["active_mismatched"][k]), float(stats["active_matched"][k]), labels.get(k))
        for k in range(width)
    ]
    return chosen, rows, stats["auc"], frequency


def unsteered_answers(lm: SteeringEngine, prompts: list[str], max_tokens: int, seed: int, batch_size: int = 16) -> list[str]:
    requests = [
        GenerationRequest([{"role": "user", "content": p}], (), max_tokens, GENERATION.temperature, seed=seed + i)
        for i, p in enumerate(prompts)
    ]
    return [r.text for r in lm.generate_in_batches(requests, batch_size, desc="unsteered answers")]


def detectors_file(
    model: str,
    lm: SteeringEngine,
    rule: str,
    chosen: list[int],
    rows: list[LatentStats],
    frequency: np.ndarray,
    prompts: PromptSetRecord | None = None,
) -> DetectorsFile:
    """The detectors, the 50 best-separating latents' statistics, every firing frequency and the
    discovery prompts (an ablation run on any of them is refused)."""
    keep = {r.latent for r in sorted(rows, key=lambda r: -r.auc)[:50]} | set(chosen)
    return DetectorsFile(
        latents=chosen,
        model=model,
        dictionary=lm.dictionary_id,
        layer=lm.layer,
        rule=rule,
        stats=[asdict(r) for r in rows if r.latent in keep],
        firing_frequency=[round(float(f), 6) for f in frequency],
        discovery_prompts=prompts,
    )


def plot_auc_histogram(auc: np.ndarray, chosen: list[int], path: str | Path) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(auc, bins=50, color="#888")
    for k in chosen:
        ax.axvline(auc[k], color="C3", lw=0.8)
    ax.set_xlabel("AUC, mismatched vs matched answers")
    ax.set_ylabel("latents")
    ax.set_title(f"{len(chosen)} off-topic detectors (red)")
    return write_png(fig, path, dpi=120)
