"""Direction sets from contrastive texts: direction_k = mean residual over target k's texts minus
the mean over neutral texts, at the steering layer (a labelled, non-SAE dictionary). A saved set
steers like an SAE (`-M dictionary=FOLDER`, or `vectors/NAME` for a shipped one): latent k's
decoder row is vector k, so `add` moves the residual by value * vector k."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import cast

import torch

from esr_eval.errors import DataFileError
from esr_eval.files import read_jsonl
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
    return cast(DirectionSet, load_dictionary(str(folder)))  # a direction-set folder


TOPICS_FIX = 'write one JSON object a line: {"id": ..., "label": "the topic as the judge reads it", "passages": ["...", ...]}'


def read_topics(path: str | Path) -> list[dict]:
    """Topics ({id, label, passages}; `positive` is read as `passages`) as contrastive targets."""
    topics = []
    for line, row in enumerate(read_jsonl(path, "topics file", TOPICS_FIX), 1):
        passages = row.get("passages", row.get("positive"))
        if not row.get("id") or not row.get("label") or not isinstance(passages, list) or not passages:
            raise DataFileError(path, line, "needs an id, a label and a non-empty list of passages", TOPICS_FIX)
        topics.append({"id": str(row["id"]), "label": str(row["label"]), "positive": [str(t) for t in passages]})
    ids = [t["id"] for t in topics]
    if len(set(ids)) != len(ids):
        raise DataFileError(path, None, f"uses the topic id {next(i for i in ids if ids.count(i) > 1)!r} twice", "give every topic its own id")
    return topics


def build_vector_set(lm: SteeringEngine, topics: list[dict], neutral: list[str], name: str, out: str | Path, model: str) -> Path:
    """Contrastive topic vectors at the engine's layer, saved as a direction-set folder."""
    vectors = contrastive_directions(lm, topics, neutral, name)
    return vectors.save(out, {
        "model": model,
        "method": "mean residual over each topic's passages minus the mean over the neutral texts",
        "topics": [t["id"] for t in topics],
        "passages_per_topic": [len(t["positive"]) for t in topics],
        "neutral_texts": len(neutral),
    })  # fmt: skip
