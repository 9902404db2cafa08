"""Direction sets from contrastive texts: direction_k = mean residual over target k's texts minus
the mean over neutral texts, at the steering layer (a labelled, non-SAE dictionary)."""

from __future__ import annotations

import hashlib
import json

import torch

from esr_eval.steering.dictionary import DirectionSet, load_dictionary
from esr_eval.steering.engine import SteeringEngine
from esr_eval.steering.models import cache_dir


def mean_residual(lm: SteeringEngine, texts: list[str]) -> torch.Tensor:
    resid = lm.prompt_residuals([[{"role": "user", "content": t}] for t in texts])
    return torch.cat(resid).mean(0)


def contrastive_directions(lm: SteeringEngine, targets: list[dict], neutral: list[str], name: str) -> DirectionSet:
    """One direction per target ({id, label, positive: [texts]}) against the neutral texts."""
    base = mean_residual(lm, neutral)
    rows = [mean_residual(lm, t["positive"]) - base for t in targets]
    return DirectionSet(torch.stack(rows), name, lm.layer, {k: t["label"] for k, t in enumerate(targets)})


def cached_directions(lm: SteeringEngine, targets: list[dict], neutral: list[str]) -> DirectionSet:
    """Build once per (model, layer, texts); stored as a direction-set folder in the cache."""
    digest = hashlib.sha1(json.dumps([lm.name, lm.layer, targets, neutral], sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / "directions" / f"hijack-{digest}"
    if not (folder / "config.json").exists():
        contrastive_directions(lm, targets, neutral, folder.name).save(folder, {"targets": [t["id"] for t in targets]})
    return load_dictionary(str(folder))
