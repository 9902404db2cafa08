"""Latent labels from top-activating tokens and their contexts over a corpus.

Offline, a latent whose top contexts share a topic is named by the nearest entry of a concept
vocabulary (`concepts.py`); other latents keep a token label that joins their most strongly
firing tokens with the words that mark their contexts (e.g. "':', ','; context: def, return").
With an Inspect model name an LLM writes the label from the same tokens and snippets instead.
Dead latents get no label.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm

WORD = re.compile(r"[A-Za-z][A-Za-z'\-]{2,}")
STOPWORDS = frozenset(
    "the and for are but not you your with this that from they have has had was were will would can could "
    "should there their them then than what when where which who whom how why its it's into about also "
    "been being some such more most other only very just like each any all our out over under here these "
    "those one two may might must does did doing make made use used using get got many much well".split()
)


@dataclass
class LatentExamples:
    frequency: torch.Tensor  # [d_sae] fraction of tokens where the latent fires
    max_activation: torch.Tensor  # [d_sae]
    top_values: torch.Tensor  # [d_sae, M] descending
    top_rows: torch.Tensor  # [d_sae, M] row of each example in the activation set (-1: none)


@torch.no_grad()
def top_examples(encode: Callable[[torch.Tensor], torch.Tensor], acts: torch.Tensor, d_sae: int,
                 n_examples: int = 20, batch: int = 4096) -> LatentExamples:
    """Firing frequency, max activation and the `n_examples` strongest rows of every latent."""
    counts = torch.zeros(d_sae)
    top_values = torch.zeros(d_sae, n_examples)
    top_rows = torch.full((d_sae, n_examples), -1, dtype=torch.long)
    for start in tqdm(range(0, acts.shape[0], batch), desc="latent examples", unit="batch"):
        f = encode(acts[start : start + batch].float())
        counts += (f > 0).sum(0).float()
        m = min(n_examples, f.shape[0])
        vals, rows = f.topk(m, dim=0)  # [m, d_sae]
        merged_vals = torch.cat([top_values, vals.T], dim=1)
        merged_rows = torch.cat([top_rows, rows.T + start], dim=1)
        top_values, pick = merged_vals.topk(n_examples, dim=1)
        top_rows = merged_rows.gather(1, pick)
    top_rows[top_values <= 0] = -1
    return LatentExamples(counts / max(1, acts.shape[0]), top_values[:, 0].clone(), top_values, top_rows)


def snippet(tokenizer, ids: Sequence[int], pos: int, before: int = 10, after: int = 3) -> str:
    """Text around position `pos` with the firing token in [[ ]]."""
    left = tokenizer.decode(ids[max(0, pos - before) : pos])
    mid = tokenizer.decode(ids[pos : pos + 1])
    right = tokenizer.decode(ids[pos + 1 : pos + 1 + after])
    return " ".join(f"{left}[[{mid}]]{right}".split())


class TokenLabeler:
    """Labels from the strongest firing tokens plus the words that distinguish the contexts."""

    def __init__(self, tokenizer, docs: list[dict]) -> None:
        self.tokenizer = tokenizer
        self.docs = docs
        df: Counter[str] = Counter()
        for d in docs:
            df.update({w.lower() for w in WORD.findall(tokenizer.decode(d["ids"][d["skip"] :]))})
        self.idf = {w: math.log(len(docs) / (1 + n)) for w, n in df.items()}

    def label(self, tokens: list[str], weights: list[float], contexts: list[str],
              n_tokens: int = 3, n_context: int = 2) -> str:
        score: Counter[str] = Counter()
        for tok, w in zip(tokens, weights):
            score[tok.strip().lower() or tok] += w  # type: ignore[assignment]  # float counts; whitespace tokens keep their raw form
        top = [t for t, _ in score.most_common(n_tokens)]
        ctx: Counter[str] = Counter()
        for c in contexts:
            for w in {w.lower() for w in WORD.findall(c)}:
                if w not in STOPWORDS and w not in top:
                    ctx[w] += self.idf.get(w, 0.0)  # type: ignore[assignment]  # float counts
        words = [w for w, s in ctx.most_common(n_context) if s > 0 and ctx_count(contexts, w) >= 2]
        text = ", ".join(t if t.isalpha() else repr(t) for t in top)
        return f"{text}; context: {', '.join(words)}" if words else text


def ctx_count(contexts: list[str], word: str) -> int:
    return sum(word in c.lower() for c in contexts)


def latent_evidence(tokenizer, docs: list[dict], doc_index: torch.Tensor, positions: torch.Tensor,
                    examples: LatentExamples, latent: int, n_snippets: int = 8) -> tuple[list[str], list[float], list[str]]:
    """(firing tokens, their activations, context snippets) of one latent's top examples."""
    tokens: list[str] = []
    weights: list[float] = []
    snippets: list[str] = []
    for value, row in zip(examples.top_values[latent].tolist(), examples.top_rows[latent].tolist()):
        if row < 0:
            continue
        ids = docs[int(doc_index[row])]["ids"]
        pos = int(positions[row])
        tokens.append(tokenizer.decode(ids[pos : pos + 1]))
        weights.append(value)
        if len(snippets) < n_snippets:
            snippets.append(snippet(tokenizer, ids, pos))
    return tokens, weights, snippets


def token_labels(tokenizer, docs: list[dict], doc_index: torch.Tensor, positions: torch.Tensor,
                 examples: LatentExamples) -> dict[int, str]:
    labeler = TokenLabeler(tokenizer, docs)
    out = {}
    for k in range(examples.top_values.shape[0]):
        if examples.frequency[k] <= 0:
            continue
        tokens, weights, snippets = latent_evidence(tokenizer, docs, doc_index, positions, examples, k)
        out[k] = labeler.label(tokens, weights, snippets)
    return out


LABEL_PROMPT = """A feature inside a language model fires on the tokens marked [[like this]] in these snippets.
Strongest firing tokens: {tokens}

Snippets:
{snippets}

Reply with only a short label (2 to 6 words) naming the concrete concept or topic the feature detects."""


def _clean(text: str) -> str:
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = re.sub(r"^(label\s*:\s*)", "", line.strip(), flags=re.I)
    return line.strip(" \"'`*.")[:80]


async def _llm_labels(model, evidence: dict[int, tuple[list[str], list[str]]], max_concurrency: int) -> dict[int, str]:
    from inspect_ai.model import GenerateConfig

    gate = asyncio.Semaphore(max_concurrency)
    config = GenerateConfig(temperature=0.0, max_tokens=24)
    bar = tqdm(total=len(evidence), desc="LLM labels", unit="latent")

    async def one(k: int, tokens: list[str], snippets: list[str]) -> tuple[int, str]:
        prompt = LABEL_PROMPT.format(
            tokens=", ".join(dict.fromkeys(t.strip() or repr(t) for t in tokens)),
            snippets="\n".join(f"- {s}" for s in snippets),
        )
        async with gate:
            output = await model.generate(prompt, config=config)
        bar.update(1)
        return k, _clean(output.completion)

    try:
        pairs = await asyncio.gather(*(one(k, t, s) for k, (t, s) in evidence.items()))
    finally:
        bar.close()
    return {k: text for k, text in pairs if text}


def llm_labels(model: str | object, evidence: dict[int, tuple[list[str], list[str]]],
               max_concurrency: int = 16) -> dict[int, str]:
    """Labels written by an Inspect model (a name such as openai/gpt-4o-mini, or a Model) from
    each latent's firing tokens and snippets: {latent: (tokens, snippets)}."""
    from inspect_ai.model import get_model

    resolved = get_model(model) if isinstance(model, str) else model
    return asyncio.run(_llm_labels(resolved, evidence, max_concurrency))


def build_labels(tokenizer, docs: list[dict], doc_index: torch.Tensor, positions: torch.Tensor,
                 examples: LatentExamples, labeler: str | object | None = None) -> dict[int, str]:
    """Offline token labels, or LLM labels when `labeler` names an Inspect model."""
    if labeler is None:
        return token_labels(tokenizer, docs, doc_index, positions, examples)
    evidence = {}
    for k in range(examples.top_values.shape[0]):
        if examples.frequency[k] > 0:
            tokens, _, snippets = latent_evidence(tokenizer, docs, doc_index, positions, examples, k)
            evidence[k] = (tokens, snippets)
    return llm_labels(labeler, evidence)


def head(examples: LatentExamples, n: int) -> LatentExamples:
    """The `n` strongest examples of every latent."""
    return LatentExamples(examples.frequency, examples.max_activation, examples.top_values[:, :n], examples.top_rows[:, :n])


def label_latents(tokenizer, docs: list[dict], doc_index: torch.Tensor, positions: torch.Tensor,
                  examples: LatentExamples, labeler: str | object | None = None,
                  n_token_examples: int = 20) -> tuple[dict[int, str], dict]:
    """(labels, concept stats) of every live latent. Offline, a latent whose contexts share a
    topic and that fires on words is named by its nearest vocabulary topic; any other keeps its
    firing tokens as label (see `concepts.concept_label`). With `labeler` an LLM writes the labels;
    the concept stats, which the concreteness filter reads, are computed offline either way."""
    from esr_eval.training.sae.concepts import concept_label, concept_stats

    concepts = concept_stats(tokenizer, docs, doc_index, positions, examples)
    strongest = head(examples, n_token_examples)
    if labeler is not None:
        return build_labels(tokenizer, docs, doc_index, positions, strongest, labeler), concepts
    tokens = token_labels(tokenizer, docs, doc_index, positions, strongest)
    return {k: concept_label(concepts[k], text) for k, text in tokens.items()}, concepts


def latent_stats(examples: LatentExamples, concepts: dict | None = None) -> dict[str, dict[str, float]]:
    """{"index": {"frequency", "max_activation"}} for every latent (dead ones at 0), plus the
    concept fields (coherence, token_share, topic, topic_similarity, n_contexts) of live ones."""
    concepts = concepts or {}
    return {
        str(k): {"frequency": float(f), "max_activation": float(m), **(concepts[k].to_dict() if k in concepts else {})}
        for k, (f, m) in enumerate(zip(examples.frequency.tolist(), examples.max_activation.tolist()))
    }
