"""Latent sampling (METHOD.md): 3x candidates, drop unlabelled and dead latents, drop latents
relevant to any prompt, optionally keep only concrete labels (rated by an LLM)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from esr_eval.steering.dictionary import FeatureDictionary
from esr_eval.steering.engine import Message, SteeredLM

CANDIDATE_FACTOR = 3
RELEVANCE_TOP_K = 100
CONCRETENESS_MIN = 65


def firing_frequencies(dictionary: FeatureDictionary) -> dict[int, float] | None:
    """Per-latent firing frequency from the dictionary's `latent_stats.json`, when it has one."""
    if dictionary.folder is None or not (dictionary.folder / "latent_stats.json").exists():
        return None
    stats = json.loads((dictionary.folder / "latent_stats.json").read_text())
    freq = stats.get("firing_frequency", stats)
    if isinstance(freq, list):
        return {k: float(v) for k, v in enumerate(freq)}
    if not isinstance(freq, dict):
        raise ValueError(f"{dictionary.folder / 'latent_stats.json'} is not {{latent: {{frequency, ...}}}} or a list")
    return {int(k): float(v.get("frequency", v.get("firing_frequency", 0.0)) if isinstance(v, dict) else v) for k, v in freq.items()}


def relevant_latents(lm: SteeredLM, prompts: Sequence[list[Message]], rule: str = "topk", top_k: int = RELEVANCE_TOP_K) -> set[int]:
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
    lm: SteeredLM,
    n: int,
    prompts: Sequence[list[Message]],
    seed: int = 0,
    relevance: str = "topk",
    concreteness: dict[int, float] | None = None,
) -> LatentSample:
    """Draw `n` latents reproducibly. Candidates are drawn in rounds of 3x until enough survive."""
    dictionary = lm.dictionary
    if dictionary is None:
        raise ValueError("sampling latents needs a dictionary: use a preset or pass -M dictionary=...")
    rng = random.Random(seed)
    freq = firing_frequencies(dictionary)
    notes = [] if freq is not None else ["no latent_stats.json beside the dictionary: dead latents not filtered"]
    relevant = relevant_latents(lm, prompts, relevance) if prompts else set()
    pool = list(range(dictionary.d_sae))
    rng.shuffle(pool)
    dropped = {"unlabelled": 0, "dead": 0, "relevant": 0, "abstract": 0}
    kept: list[int] = []
    for start in range(0, len(pool), CANDIDATE_FACTOR * n):
        for k in pool[start : start + CANDIDATE_FACTOR * n]:
            if not dictionary.label(k):
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
        raise ValueError(
            f"only {len(kept)} latents pass the filters ({dropped}), {n} wanted: "
            "lower n_latents, use relevance=topk, or use a dictionary with more labelled latents"
        )
    return LatentSample(sorted(kept[:n]), notes, dropped)


def load_prompts(path: str | Path) -> list[dict[str, str]]:
    """Prompts as [{id, prompt}] from txt (one per line), jsonl ({prompt} or {text}) or csv."""
    import csv

    import jsonlines

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file {path} does not exist: pass -T prompts=FILE (txt, jsonl or csv)")
    if path.suffix == ".jsonl":
        with jsonlines.open(path) as reader:
            rows = [r for r in reader]
        texts = [(r.get("id"), r.get("prompt") or r.get("text") or r.get("input")) for r in rows]
    elif path.suffix == ".csv":
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        texts = [(r.get("id"), r.get("prompt") or r.get("text")) for r in rows]
    else:
        texts = [(None, line.strip()) for line in path.read_text().splitlines() if line.strip()]
    prompts = [{"id": str(i if pid is None else pid), "prompt": t} for i, (pid, t) in enumerate(texts) if t]
    if not prompts:
        raise ValueError(f"{path} holds no prompts: one per line (txt), or a `prompt` field (jsonl, csv)")
    return prompts


CONCRETENESS_PROMPT = """Rate how concrete this description of a language-model feature is, from 0 (very abstract:
grammar, punctuation, tone, or conversational/assistant behaviour) to 100 (very concrete and
domain-specific: a physical object, a place, a field of knowledge). Reply with the number only.

Feature: {label}"""


async def rate_concreteness(model_name: str, labels: dict[int, str], cache_path: str | Path | None = None) -> dict[int, float]:
    """LLM ratings 0-100 of each label's concreteness, cached per (model, label) in a jsonl file."""
    import asyncio
    import re

    from inspect_ai.model import get_model

    from esr_eval.io import atomic_write_jsonl, read_jsonl
    from esr_eval.steering.models import cache_dir

    path = Path(cache_path) if cache_path else cache_dir() / "concreteness.jsonl"
    known = {(r["model"], r["label"]): float(r["rating"]) for r in read_jsonl(path)}
    model = get_model(model_name)
    todo = sorted({text for text in labels.values() if (model_name, text) not in known})

    async def rate(text: str) -> None:
        reply = (await model.generate(CONCRETENESS_PROMPT.format(label=text))).completion
        found = re.search(r"\d+(?:\.\d+)?", reply)
        if found:
            known[(model_name, text)] = min(100.0, float(found.group()))

    await asyncio.gather(*(rate(t) for t in todo))
    if todo:
        rows = [{"model": m, "label": t, "rating": r} for (m, t), r in sorted(known.items())]
        atomic_write_jsonl(path, rows)
    return {k: known.get((model_name, text), 0.0) for k, text in labels.items()}
