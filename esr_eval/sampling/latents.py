"""Latent sampling (METHOD.md): 3x candidates, drop unlabelled and dead latents, drop latents
relevant to any prompt, optionally keep only concrete labels (rated by an LLM)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from esr_eval.errors import UsageError
from esr_eval.files import read_json
from esr_eval.steering.dictionary import FeatureDictionary
from esr_eval.steering.engine import Message, SteeringEngine

CANDIDATE_FACTOR = 3
RELEVANCE_TOP_K = 100
CONCRETENESS_MIN = 65  # the paper keeps labels an LLM rates >= 65 of 100


def firing_frequencies(dictionary: FeatureDictionary) -> dict[int, float] | None:
    """Per-latent firing frequency from the dictionary's `latent_stats.json`, when it has one."""
    if dictionary.folder is None or not (dictionary.folder / "latent_stats.json").exists():
        return None
    stats = read_json(dictionary.folder / "latent_stats.json", "latent stats file")
    freq = stats.get("firing_frequency", stats)
    if isinstance(freq, list):
        return {k: float(v) for k, v in enumerate(freq)}
    if not isinstance(freq, dict):
        raise ValueError(f"{dictionary.folder / 'latent_stats.json'} is not {{latent: {{frequency, ...}}}} or a list")
    return {int(k): float(v.get("frequency", v.get("firing_frequency", 0.0)) if isinstance(v, dict) else v) for k, v in freq.items()}


def relevant_latents(lm: SteeringEngine, prompts: Sequence[list[Message]], rule: str = "topk", top_k: int = RELEVANCE_TOP_K) -> set[int]:
    """Latents tied to the prompts: among the `top_k` by max activation on any prompt ("topk"),
    or active at all on any prompt ("strict": only latents exactly 0 everywhere survive)."""
    if rule not in ("topk", "strict"):
        raise ValueError(f"relevance rule {rule!r} is unknown: use topk or strict")
    assert lm.dictionary is not None
    found: set[int] = set()
    for resid in lm.prompt_residuals(prompts):
        peak = lm.dictionary.encode(resid).amax(0)
        if rule == "strict":
            found |= set(torch.nonzero(peak > 0).flatten().tolist())
        else:
            found |= set(peak.topk(min(top_k, peak.numel())).indices.tolist())
    return found


@dataclass
class LatentSample:
    latents: list[int]
    notes: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)


def sample_latents(
    lm: SteeringEngine,
    n: int,
    prompts: Sequence[list[Message]],
    seed: int = 0,
    relevance: str = "topk",
    concreteness: dict[int, float] | None = None,
    exclude: frozenset[int] | set[int] = frozenset(),
) -> LatentSample:
    """Draw `n` latents reproducibly. Candidates are drawn in rounds of 3x until enough survive;
    `exclude` (e.g. a tuned model's training latents) is never drawn."""
    dictionary = lm.dictionary
    if dictionary is None:
        raise ValueError("sampling latents needs a dictionary: use a preset or pass -M dictionary=...")
    rng = random.Random(seed)
    freq = firing_frequencies(dictionary)
    notes = [] if freq is not None else ["no latent_stats.json beside the dictionary: dead latents not filtered"]
    relevant = relevant_latents(lm, prompts, relevance) if prompts else set()
    pool = list(range(dictionary.d_sae))
    rng.shuffle(pool)
    dropped = {"unlabelled": 0, "dead": 0, "relevant": 0, "abstract": 0, "trained on": 0}
    kept: list[int] = []
    for start in range(0, len(pool), CANDIDATE_FACTOR * n):
        for k in pool[start : start + CANDIDATE_FACTOR * n]:
            if k in exclude:
                dropped["trained on"] += 1
            elif not dictionary.label(k):
                dropped["unlabelled"] += 1
            elif freq is not None and freq.get(k, 0.0) <= 0.0:
                dropped["dead"] += 1
            elif k in relevant:
                dropped["relevant"] += 1
            elif concreteness is not None and concreteness.get(k, 0.0) < CONCRETENESS_MIN:
                dropped["abstract"] += 1
            else:
                kept.append(k)
        if len(kept) >= n:
            break
    if len(kept) < n:
        raise UsageError(
            f"only {len(kept)} latents pass the filters ({dropped}), {n} wanted: "
            "lower n_latents, use relevance=topk, or use a dictionary with more labelled latents"
        )
    return LatentSample(sorted(kept[:n]), notes, dropped)
