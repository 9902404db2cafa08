"""The paper's concreteness filter with an LLM: a model rates each label 0 (abstract) to 100
(concrete, domain-specific); ratings are cached per (model, label)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from esr_eval.files import read_jsonl_cache, update_jsonl_cache
from esr_eval.steering.models import cache_dir

CONCRETENESS_PROMPT = """Rate how concrete this description of a language-model feature is, from 0 (very abstract:
grammar, punctuation, tone, or conversational/assistant behaviour) to 100 (very concrete and
domain-specific: a physical object, a place, a field of knowledge). Reply with the number only.

Feature: {label}"""


async def rate_concreteness(model_name: str, labels: dict[int, str], cache_path: str | Path | None = None) -> dict[int, float]:
    """LLM ratings 0-100 of each label's concreteness, cached per (model, label) in a jsonl file."""
    from inspect_ai.model import get_model

    path = Path(cache_path) if cache_path else cache_dir() / "concreteness.jsonl"
    known = {(r["model"], r["label"]): float(r["rating"]) for r in read_jsonl_cache(path).rows}
    model = get_model(model_name)
    todo = sorted({text for text in labels.values() if (model_name, text) not in known})

    async def rate(text: str) -> None:
        reply = (await model.generate(CONCRETENESS_PROMPT.format(label=text))).completion
        found = re.search(r"\d+(?:\.\d+)?", reply)
        if found:
            known[(model_name, text)] = min(100.0, float(found.group()))

    await asyncio.gather(*(rate(t) for t in todo))
    if todo:
        fresh = [{"model": model_name, "label": t, "rating": known[(model_name, t)]} for t in todo if (model_name, t) in known]
        update_jsonl_cache(path, lambda rows: rows + fresh)
    return {k: known.get((model_name, text), 0.0) for k, text in labels.items()}
