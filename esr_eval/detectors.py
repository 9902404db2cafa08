"""Off-topic detectors (OTD): latents that fire when an answer does not fit its prompt.

Discovery: unsteered answers to a prompt set; each prompt is paired with its own answer
(matched) and, by a derangement, with another prompt's answer (mismatched); a latent's
activation over an answer is its max over the answer's tokens. Detectors separate mismatched
from matched pairs. Random controls ablate as many other latents, drawn from the detectors'
firing-frequency bins.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from esr_eval.io import atomic_write_text
from esr_eval.steering.engine import GenerationRequest, SteeredLM

RULES = ("strict", "auc")


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


def answer_activations(lm: SteeredLM, pairs: Sequence[tuple[str, str]], batch_size: int = 8) -> list[torch.Tensor]:
    """Per-token activations [answer_tokens, d_sae] over the answer of each (prompt, answer)."""
    return lm.read_latents([([{"role": "user", "content": p}], a) for p, a in pairs], batch_size=batch_size)


def max_over_tokens(acts: list[torch.Tensor], width: int) -> np.ndarray:
    return torch.stack([a.amax(0) if len(a) else torch.zeros(width) for a in acts]).numpy()


def discover(lm: SteeredLM, prompts: list[str], answers: list[str], seed: int = 0, rule: str = "strict", min_auc: float = 0.95) -> tuple[list[int], list[LatentStats], np.ndarray, np.ndarray]:
    """Detectors, stats for every latent, AUCs, and each latent's firing frequency over the
    matched answers' tokens (for matched random controls)."""
    width = lm.dictionary.d_sae
    perm = derangement(len(prompts), random.Random(seed))
    matched_acts = answer_activations(lm, list(zip(prompts, answers)))
    matched = max_over_tokens(matched_acts, width)
    mismatched = max_over_tokens(answer_activations(lm, [(prompts[i], answers[perm[i]]) for i in range(len(prompts))]), width)
    tokens = torch.cat([a for a in matched_acts if len(a)])
    frequency = (tokens > 0).float().mean(0).numpy()
    stats = separation_stats(mismatched, matched)
    chosen = select_detectors(stats, rule, min_auc)
    labels = lm.dictionary.labels
    rows = [
        LatentStats(k, float(stats["auc"][k]), float(stats["cohens_d"][k]), float(stats["active_mismatched"][k]), float(stats["active_matched"][k]), labels.get(k))
        for k in range(width)
    ]
    return chosen, rows, stats["auc"], frequency


def unsteered_answers(lm: SteeredLM, prompts: list[str], max_tokens: int, seed: int, batch_size: int = 16) -> list[str]:
    requests = [GenerationRequest([{"role": "user", "content": p}], (), max_tokens, 0.6, seed=seed + i) for i, p in enumerate(prompts)]
    return [r.text for r in lm.generate_in_batches(requests, batch_size, desc="unsteered answers")]


def write_detectors(path: str | Path, model: str, lm: SteeredLM, rule: str, chosen: list[int], rows: list[LatentStats], frequency: np.ndarray) -> Path:
    top = sorted(rows, key=lambda r: -r.auc)[:50]
    keep = {r.latent for r in top} | set(chosen)
    data = {
        "model": model,
        "dictionary": lm.dictionary_id,
        "layer": lm.layer,
        "rule": rule,
        "latents": chosen,
        "stats": [asdict(r) for r in rows if r.latent in keep],
        "firing_frequency": [round(float(f), 6) for f in frequency],
    }
    return atomic_write_text(path, json.dumps(data, indent=1))


def read_detectors(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"detectors file {path} does not exist: make one with `esr-eval find-detectors --out {path}`")
    data = json.loads(path.read_text())
    if not data.get("latents"):
        raise ValueError(f"{path} lists no detector latents: rerun find-detectors with --rule auc or more prompts")
    return data


def plot_auc_histogram(auc: np.ndarray, chosen: list[int], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(auc, bins=50, color="#888")
    for k in chosen:
        ax.axvline(auc[k], color="C3", lw=0.8)
    ax.set_xlabel("AUC, mismatched vs matched answers")
    ax.set_ylabel("latents")
    ax.set_title(f"{len(chosen)} off-topic detectors (red)")
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return Path(path)


# ------------------------------------------------------------------ matched random controls
def frequency_bins(frequencies: dict[int, float], n_bins: int = 10) -> dict[int, int]:
    """Quantile bins of log firing frequency over live latents."""
    live = {k: f for k, f in frequencies.items() if f > 0}
    logf = np.log10(np.array(list(live.values())))
    edges = np.quantile(logf, np.linspace(0, 1, n_bins + 1)[1:-1])
    return {k: int(np.searchsorted(edges, v, side="right")) for k, v in zip(live, logf)}


def matched_controls(detectors: list[int], frequencies: dict[int, float], n_sets: int = 3, seed: int = 0, n_bins: int = 10) -> list[list[int]]:
    """`n_sets` sets of random non-detector latents, each latent drawn from the bin of the detector
    it replaces; a bin that runs out borrows from the nearest bin."""
    bins = frequency_bins(frequencies, n_bins)
    pools: dict[int, list[int]] = {}
    for k, b in sorted(bins.items()):
        if k not in detectors:
            pools.setdefault(b, []).append(k)
    rng = random.Random(seed)
    sets = []
    for _ in range(int(n_sets)):
        used: set[int] = set()
        chosen = []
        for det in detectors:
            home = bins.get(det, 0)
            for b in sorted(pools, key=lambda b: abs(b - home)):
                free = [k for k in pools[b] if k not in used]
                if free:
                    pick = rng.choice(free)
                    used.add(pick)
                    chosen.append(pick)
                    break
        sets.append(sorted(chosen))
    return sets


def control_frequencies(detectors_file: dict, dictionary) -> dict[int, float]:
    """Firing frequencies for matching: the dictionary's latent_stats.json (large corpus) when it
    has one, else the frequencies measured during discovery."""
    from esr_eval.latents import firing_frequencies

    found = firing_frequencies(dictionary)
    if found is None:
        found = {k: float(f) for k, f in enumerate(detectors_file.get("firing_frequency", []))}
    if not found:
        raise ValueError("no firing frequencies to match controls on: rerun `esr-eval find-detectors`")
    return found


# ------------------------------------------------------------------ command
def _find_detectors(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from esr_eval.explore import engine_from
    from esr_eval.latents import load_prompts
    from esr_eval.tasks.common import PROMPTS_FILE

    if args.rule not in RULES:
        raise ValueError(f"--rule must be one of {RULES}")
    prompts = [p["prompt"] for p in load_prompts(args.prompts or PROMPTS_FILE)]
    lm = engine_from(args)
    if lm.dictionary is None:
        raise ValueError("find-detectors needs a dictionary: use a preset or --dictionary")
    answers = unsteered_answers(lm, prompts, args.max_tokens, args.seed)
    chosen, rows, auc, frequency = discover(lm, prompts, answers, args.seed, args.rule, args.min_auc)
    out = write_detectors(args.out, args.model, lm, args.rule, chosen, rows, frequency)
    plot = plot_auc_histogram(auc, chosen, Path(args.out).with_suffix(".png"))
    table = Table(title=f"{len(chosen)} detectors ({args.rule} rule) -> {out}, {plot}")
    for col in ("latent", "AUC", "Cohen's d", "active mismatched", "active matched", "label"):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: -r.auc)[: max(10, len(chosen))]:
        mark = "*" if r.latent in chosen else ""
        table.add_row(f"{r.latent}{mark}", f"{r.auc:.3f}", f"{r.cohens_d:.2f}", f"{r.active_mismatched:.2f}", f"{r.active_matched:.2f}", r.label or "")
    Console().print(table)
    return 0


def register(sub) -> None:
    from esr_eval.explore import add_model_args

    cmd = sub.add_parser("find-detectors", help="discover off-topic detector latents (derangement of answers)")
    add_model_args(cmd)
    cmd.add_argument("--prompts", help="discovery prompt file (default: the packaged prompt set)")
    cmd.add_argument("--max-tokens", type=int, default=256)
    cmd.add_argument("--rule", default="strict", help="strict (0 on matched, >= 80%% of mismatched) or auc")
    cmd.add_argument("--min-auc", type=float, default=0.95)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--out", default="detectors.json", help="detectors JSON (a histogram PNG is written beside it)")
    cmd.set_defaults(func=_find_detectors)
