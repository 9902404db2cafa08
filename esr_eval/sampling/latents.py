"""Latent sampling (docs/method.md): 3x candidates, drop unlabelled and dead latents, drop latents
relevant to any prompt, keep only concepts worth steering: offline by default (token share and
context coherence from `latent_stats.json`, see `training/sae/concepts.py`), or by an LLM's
concreteness rating of each label."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from esr_eval.config import CONCEPT_FILTER, ConceptFilter
from esr_eval.errors import UsageError
from esr_eval.files import atomic_write_text, read_json
from esr_eval.steering.dictionary import DirectionSet, FeatureDictionary
from esr_eval.steering.engine import Message, SteeringEngine

CANDIDATE_FACTOR = 3
RELEVANCE_TOP_K = 100
CONCRETENESS_MIN = CONCEPT_FILTER.min_rating

# why a latent is not a concept worth steering (a key of LatentSample.dropped), or None
ConcretenessFilter = Callable[[int], str | None]


def _latent_stats(dictionary: FeatureDictionary) -> dict | None:
    if dictionary.folder is None or not (dictionary.folder / "latent_stats.json").exists():
        return None
    return read_json(dictionary.folder / "latent_stats.json", "latent stats file")


def firing_frequencies(dictionary: FeatureDictionary) -> dict[int, float] | None:
    """Per-latent firing frequency from the dictionary's `latent_stats.json`, when it has one."""
    stats = _latent_stats(dictionary)
    if stats is None:
        return None
    freq: Any = stats.get("firing_frequency", stats)
    if isinstance(freq, list):
        return {k: float(v) for k, v in enumerate(freq)}
    if not isinstance(freq, dict):
        raise ValueError(f"{dictionary.folder}/latent_stats.json is not {{latent: {{frequency, ...}}}} or a list")
    return {int(k): float(_frequency(v)) for k, v in freq.items()}


def _frequency(entry: Any) -> Any:
    """A latent's entry of latent_stats.json: its frequency, or a dict that holds it."""
    if isinstance(entry, dict):
        return entry.get("frequency", entry.get("firing_frequency", 0.0))
    return entry


def relevance_cache_file(lm: SteeringEngine, prompts: Sequence[list[Message]], rule: str, top_k: int) -> Path:
    """Where the relevance pass's result is kept, named by everything that changes it: the
    weights, the dictionary, the dtype, engine, device and torch that compute it, the prompts'
    token ids, the rule and k."""
    from esr_eval.steering.models import cache_dir, model_fingerprint
    from esr_eval.steering.presets import get_preset

    preset = get_preset(lm.name)
    key = {
        "model": preset.model_key() if preset else model_fingerprint(lm.name),
        "dictionary": lm.dictionary_id,
        "dtype": getattr(lm, "dtype", None),
        "engine": type(lm).__name__,
        "device": str(getattr(lm, "layer_device", "")),
        "torch": torch.__version__,
        "prompts": [lm.prompt_ids(m) for m in prompts],
        "rule": rule,
        "top_k": top_k,
    }
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "relevance" / f"{digest}.json"


def relevant_latents(
    lm: SteeringEngine, prompts: Sequence[list[Message]], rule: str = "topk", top_k: int = RELEVANCE_TOP_K, cache: bool = True
) -> set[int]:
    """Latents tied to the prompts: among the `top_k` by max activation on any prompt ("topk"),
    or active at all on any prompt ("strict": only latents exactly 0 everywhere survive).
    With `cache`, the result is kept in the cache folder (one forward per prompt is most of a
    small eval's start-up on a CPU) and read back by later runs with the same key."""
    if rule not in ("topk", "strict"):
        raise ValueError(f"relevance rule {rule!r} is unknown: use topk or strict")
    assert lm.dictionary is not None
    file = relevance_cache_file(lm, prompts, rule, top_k) if cache else None
    if file is not None and file.exists():
        try:
            return set(json.loads(file.read_text())["latents"])
        except (ValueError, KeyError, TypeError):
            pass  # a damaged file: computed again and rewritten
    found = _relevant_latents(lm, prompts, rule, top_k)
    if file is not None:
        try:
            atomic_write_text(file, json.dumps({"latents": sorted(found)}))
        except OSError:
            pass  # a read-only cache only costs time
    return found


def _relevant_latents(lm: SteeringEngine, prompts: Sequence[list[Message]], rule: str, top_k: int) -> set[int]:
    assert lm.dictionary is not None
    found: set[int] = set()
    for resid in lm.prompt_residuals(prompts):
        peak = lm.dictionary.encode(resid).amax(0)
        if rule == "strict":
            found |= set(torch.nonzero(peak > 0).flatten().tolist())
        else:
            found |= set(peak.topk(min(top_k, peak.numel())).indices.tolist())
    return found


def offline_concreteness(dictionary: FeatureDictionary, rule: ConceptFilter = CONCEPT_FILTER) -> ConcretenessFilter | None:
    """The offline filter from `latent_stats.json` ("token_level": the latent mostly fires on
    punctuation, digits, function words or word pieces; "no_topic": its contexts share no
    topic; "no_concept_stats": the latent has none), or None when the stats hold no concept
    fields at all (relabel with `esr-eval label-sae`)."""
    stats = _latent_stats(dictionary)
    if not isinstance(stats, dict) or not any(isinstance(v, dict) and "coherence" in v for v in stats.values()):
        return None

    def reason(k: int) -> str | None:
        entry = stats.get(str(k)) or {}
        if "coherence" not in entry:
            return "no_concept_stats"  # it did not fire where the labels were made
        if float(entry["token_share"]) > rule.max_token_share:
            return "token_level"
        if float(entry.get("coherence", 0.0)) < rule.min_coherence:
            return "no_topic"
        return None

    return reason


def rated_concreteness(ratings: Mapping[int, float], min_rating: float = CONCRETENESS_MIN) -> ConcretenessFilter:
    """The paper's filter: an LLM's 0-100 rating of each label, kept at >= `min_rating`."""
    return lambda k: None if ratings.get(k, 0.0) >= min_rating else "abstract"


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
    concreteness: ConcretenessFilter | None = None,
    exclude: frozenset[int] | set[int] = frozenset(),
) -> LatentSample:
    """Draw `n` latents reproducibly. Candidates are drawn in rounds of 3x until enough survive.
    `concreteness` says why a latent is not worth steering (None: keep); see
    `offline_concreteness` and `rated_concreteness`. `exclude` (e.g. a tuned model's training
    latents) is never drawn."""
    dictionary = lm.dictionary
    if dictionary is None:
        raise ValueError("sampling latents needs a dictionary: use a preset or pass -M dictionary=...")
    rng = random.Random(seed)
    freq = firing_frequencies(dictionary)
    vector_set = isinstance(dictionary, DirectionSet)  # steering vectors: none is dead, none is sparse
    notes = [] if freq is not None or vector_set else ["no latent_stats.json beside the dictionary: dead latents not filtered"]
    pool = list(range(dictionary.d_sae))
    rng.shuffle(pool)

    def reason(k: int, relevant: set[int]) -> str | None:
        if k in exclude:
            return "trained on"
        if not dictionary.label(k):
            return "unlabelled"
        if freq is not None and freq.get(k, 0.0) <= 0.0:
            return "dead"
        if k in relevant:
            return "relevant"
        return concreteness(k) if concreteness is not None else None

    eligible = sum(reason(k, set()) is None for k in pool)
    if eligible < n:  # known before the relevance pass reads the model over every prompt
        raise UsageError(
            f"only {eligible} latents pass the label, firing and concreteness filters (of the dictionary's {len(pool)}), "
            f"{n} wanted: lower n_latents, pass -T concreteness=none, or use a dictionary with more labelled latents"
        )
    if vector_set:
        # a vector's projection is never 0 and a set has far fewer than top-k vectors: both rules would drop every one
        relevant: set[int] = set()
        notes.append(
            f"relevance filter skipped: {dictionary.name} is a vector set (write its topics away from the prompts' subjects)"
        )
    else:
        relevant = relevant_latents(lm, prompts, relevance) if prompts else set()
    dropped = {"unlabelled": 0, "dead": 0, "relevant": 0}
    kept: list[int] = []
    for start in range(0, len(pool), CANDIDATE_FACTOR * n):
        for k in pool[start : start + CANDIDATE_FACTOR * n]:
            why = reason(k, relevant)
            if why is None:
                kept.append(k)
            else:
                dropped[why] = dropped.get(why, 0) + 1
        if len(kept) >= n:
            break
    if len(kept) < n:
        raise UsageError(
            f"only {len(kept)} latents pass the filters ({dropped}), {n} wanted: "
            "lower n_latents, use relevance=topk, pass -T concreteness=none, or use a dictionary with more labelled latents"
        )
    return LatentSample(sorted(kept[:n]), notes, dropped)
