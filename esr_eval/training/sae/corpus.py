"""The SAE training corpus: the model's own answers to everyday prompts, plus optional
Python documentation text (`pydoc_data.topics`), as token ids.

Answers are generated in batches and appended to a jsonl cache under the user cache dir, one
complete document per line (a torn last line is skipped on read), so an interrupted run
resumes where it stopped and a later run with more tokens only generates the difference.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from esr_eval.config import GENERATION, asset_path
from esr_eval.files import read_jsonl_cache
from esr_eval.steering.engine import GenerationRequest, SteeringEngine
from esr_eval.steering.models import cache_dir

PROMPTS_FILE = asset_path("prompts", "sae_corpus.json")
MIN_SKIP = 2  # BOS and the huge-norm position after it


@dataclass(frozen=True)
class CorpusSpec:
    model: str
    seed: int = 0
    max_new_tokens: int = 192
    temperature: float = 0.6
    repetition_penalty: float = GENERATION.repetition_penalty
    batch_size: int = 64
    pydoc_share: float = 0.0  # fraction of the token budget taken from pydoc_data.topics
    heldout_share: float = 0.05

    def key(self) -> str:
        prompts = PROMPTS_FILE.read_bytes()
        blob = json.dumps(
            [self.model, self.seed, self.max_new_tokens, self.temperature, self.repetition_penalty,
             hashlib.sha1(prompts).hexdigest()]
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        return (
            f"answers of {self.model} (temperature {self.temperature}, up to {self.max_new_tokens} new tokens, "
            f"repetition penalty {self.repetition_penalty}, no steering) to prompts from topics x templates in "
            f"esr_eval/assets/prompts/{PROMPTS_FILE.name}"
            + (f", mixed with {self.pydoc_share:.0%} Python pydoc_data.topics text" if self.pydoc_share else "")
        )


def corpus_prompts(seed: int) -> list[str]:
    """Every topic x template combination, shuffled with `seed`."""
    data = json.loads(PROMPTS_FILE.read_text())
    prompts = [t.format(topic=topic) for topic in data["topics"] for t in data["templates"]]
    random.Random(seed).shuffle(prompts)
    return prompts


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def answer_documents(engine: SteeringEngine, spec: CorpusSpec, n_tokens: int) -> list[dict]:
    """Documents {"ids", "skip", "source", "prompt"} whose kept tokens (after `skip`) reach
    `n_tokens`; `skip` covers the prompt prefix every conversation shares (system prompt)."""
    prompts = corpus_prompts(spec.seed)
    probe = [engine.prompt_ids([{"role": "user", "content": p}]) for p in prompts[:2]]
    skip = max(MIN_SKIP, _common_prefix(*probe))
    path = cache_dir() / "sae_corpus" / f"{Path(spec.model).name}-{spec.key()}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    docs = read_jsonl_cache(path).rows
    have = sum(len(d["ids"]) - d["skip"] for d in docs)
    done = len(docs)
    with tqdm(total=n_tokens, initial=min(have, n_tokens), desc="answers (tokens)", unit="tok") as bar:
        while have < n_tokens:
            if done >= len(prompts):
                raise ValueError(
                    f"the {len(prompts)} corpus prompts give only {have} tokens: ask for fewer --tokens "
                    "or raise --max-new-tokens"
                )
            batch = prompts[done : done + spec.batch_size]
            requests = [
                GenerationRequest([{"role": "user", "content": p}], (), spec.max_new_tokens, spec.temperature,
                                  repetition_penalty=spec.repetition_penalty, seed=spec.seed * 1_000_003 + done + i)
                for i, p in enumerate(batch)
            ]
            rows: list[dict[str, Any]] = []
            for p, req, res in zip(batch, requests, engine.generate(requests)):
                body = res.token_ids[:-1] if res.stop_reason == "stop" else res.token_ids
                ids = engine.prompt_ids(req.messages) + body
                rows.append({"prompt": p, "ids": ids, "skip": skip, "source": "answer"})
            with path.open("a") as fh:  # one complete document per line
                fh.write("".join(json.dumps(r) + "\n" for r in rows))
                fh.flush()
            docs += rows
            done += len(rows)
            gained = sum(len(r["ids"]) - skip for r in rows)
            have += gained
            bar.update(min(gained, max(0, n_tokens - bar.n)))
    return _take(docs, n_tokens)


def _take(docs: list[dict], n_tokens: int) -> list[dict]:
    out, have = [], 0
    for d in docs:
        if have >= n_tokens:
            break
        out.append(d)
        have += len(d["ids"]) - d["skip"]
    return out


def pydoc_documents(tokenizer, n_tokens: int, chunk: int = 256) -> list[dict]:
    """Python's own documentation topics, cut into `chunk`-token documents that start with BOS."""
    from pydoc_data.topics import topics

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    docs, have = [], 0
    for name in sorted(topics):
        ids = tokenizer(topics[name], add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), chunk):
            piece = bos + ids[start : start + chunk]
            if len(piece) <= MIN_SKIP + 8 or have >= n_tokens:
                continue
            docs.append({"prompt": None, "ids": piece, "skip": MIN_SKIP, "source": "pydoc"})
            have += len(piece) - MIN_SKIP
    return docs


def build_corpus(engine: SteeringEngine, spec: CorpusSpec, n_tokens: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out) documents totalling about `n_tokens * (1 + heldout_share)` kept tokens;
    held-out documents come from both sources in proportion and are never trained on."""
    total = int(n_tokens * (1 + spec.heldout_share))
    n_pydoc = int(total * spec.pydoc_share)
    docs = answer_documents(engine, spec, total - n_pydoc)
    if n_pydoc:
        docs += pydoc_documents(engine.tokenizer, n_pydoc)
    rng = random.Random(spec.seed)
    order = list(range(len(docs)))
    rng.shuffle(order)
    n_held = max(1, round(len(docs) * spec.heldout_share / (1 + spec.heldout_share)))
    held = set(order[:n_held])
    train = [d for i, d in enumerate(docs) if i not in held]
    heldout = [d for i, d in enumerate(docs) if i in held]
    return train, heldout
