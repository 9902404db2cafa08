"""Concept names, coherence and token share of SAE latents from their top-activating contexts.

For each live latent, the text window around each of its strongest firing positions (one per
document, so a single long document cannot pass for a topic) is embedded with
all-MiniLM-L6-v2. Coherence is the mean cosine similarity between the windows: how much the
contexts share a topic. The windows' normalised mean is matched against the concept vocabulary
(`esr_eval/assets/concepts/vocabulary.txt`, concrete topics) and the nearest entry names the
latent. Token share is the share of the strongest firing tokens that are punctuation, digits,
single function words or word pieces: a latent that mostly fires on those is token-level,
whatever text it sits in.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from esr_eval.config import CONCEPT_FILTER, ConceptFilter, asset_path

VOCABULARY_FILE = asset_path("concepts", "vocabulary.txt")
CONTEXT_BEFORE = 16  # tokens of a context window before the firing token
CONTEXT_AFTER = 6
MAX_CONTEXTS = 8  # windows per latent, each from its own document
MIN_CONTEXTS = 3  # fewer distinct documents: no coherence (0)
TOKEN_EXAMPLES = 20  # strongest examples whose firing tokens give the token share
N_EXAMPLES = 64  # top examples to collect per latent (enough to find MAX_CONTEXTS documents)

# Articles, pronouns, prepositions, conjunctions, auxiliaries, determiners and the adverbs that
# carry no topic: a latent firing on these is about grammar, not a concept.
FUNCTION_WORDS = frozenset(
    """a an the this that these those there here some any each every no none all both either neither
    i me my mine we us our ours you your yours he him his she her hers it its they them their theirs
    myself yourself himself herself itself ourselves themselves who whom whose which what whatever
    whoever when where why how whether if then than else because since while though although unless
    until as so such too very also just only even still yet already not nor or and but for of to in
    on at by with without from into onto upon over under about above below between among through
    during before after against around across along toward towards within via per up down out off
    is am are was were be been being have has had having do does did doing done will would shall
    should can could may might must ought let lets get gets got s t d ll re ve m n't 's 're 've 'd 'll
    'm more most less least much many few several other another same own one ones first next last
    like well really quite rather almost often always never sometimes usually again ever perhaps
    however therefore thus hence instead otherwise anyway indeed now today yes ok okay oh etc""".split()
)


@dataclass(frozen=True)
class ConceptStats:
    """What `latent_stats.json` stores per latent beside frequency and max activation."""

    coherence: float  # mean cosine between context windows (0: fewer than MIN_CONTEXTS documents)
    token_share: float  # share of the strongest firing tokens that are token-level
    topic: str  # nearest vocabulary entry to the contexts' mean
    topic_similarity: float  # its cosine to that mean
    n_contexts: int  # distinct documents among the top examples

    def to_dict(self) -> dict[str, float | str | int]:
        out = asdict(self)
        out["coherence"] = round(self.coherence, 4)
        out["token_share"] = round(self.token_share, 4)
        out["topic_similarity"] = round(self.topic_similarity, 4)
        return out


def is_token_level(stats: ConceptStats, rule: ConceptFilter = CONCEPT_FILTER) -> bool:
    return stats.token_share > rule.max_token_share


def is_topical(stats: ConceptStats, rule: ConceptFilter = CONCEPT_FILTER) -> bool:
    return stats.coherence >= rule.min_coherence


def load_vocabulary(path: str | Path = VOCABULARY_FILE) -> list[str]:
    """Topics, one a line; blank lines and lines starting with '#' are skipped."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    topics = [line for line in lines if line and not line.startswith("#")]
    if not topics:
        raise ValueError(f"{path} holds no topics: write one topic a line")
    return topics


@cache
def _vocabulary_vectors(path: str) -> tuple[list[str], np.ndarray]:
    from esr_eval.embedding import embed

    topics = load_vocabulary(path)
    return topics, embed(topics)


def token_kind(piece: str, before: str) -> str | None:
    """'punctuation', 'digit', 'piece', 'function word', or None for a word. `piece` is the
    text the token adds (its leading space included), `before` the text just before it."""
    word = piece.strip()
    if not any(c.isalnum() for c in word):
        return "punctuation"
    if not any(c.isalpha() for c in word):
        return "digit"
    if piece[:1].isalnum() and before[-1:].isalnum():
        return "piece"  # continues the word before it
    if len(word) == 1 or word.lower().strip(".,;:!?\"'()") in FUNCTION_WORDS or word.lower() in FUNCTION_WORDS:
        return "function word"
    return None


def _piece(tokenizer, ids: list[int], pos: int) -> tuple[str, str]:
    """(text the token at `pos` adds, the few characters before it)."""
    start = max(0, pos - 3)
    before = tokenizer.decode(ids[start:pos])
    with_token = tokenizer.decode(ids[start : pos + 1])
    return (with_token[len(before) :] if with_token.startswith(before) else tokenizer.decode(ids[pos : pos + 1])), before


def _window(tokenizer, doc: dict, pos: int) -> str:
    ids = doc["ids"]
    text = tokenizer.decode(ids[max(doc["skip"], pos - CONTEXT_BEFORE) : pos + 1 + CONTEXT_AFTER])
    return " ".join(text.split())


def coherence(vectors: np.ndarray) -> float:
    """Mean cosine similarity over pairs of unit vectors (0 with fewer than MIN_CONTEXTS)."""
    m = len(vectors)
    if m < MIN_CONTEXTS:
        return 0.0
    total = vectors.sum(0)
    return float((total @ total - m) / (m * (m - 1)))


def _evidence(tokenizer, docs, doc_index, positions, values, rows):
    """Windows (one per document) and token kinds of one latent's top examples."""
    windows: dict[int, tuple[int, int]] = {}
    kinds: list[str | None] = []
    for value, row in zip(values, rows):
        if row < 0 or value <= 0:
            continue
        d, pos = int(doc_index[row]), int(positions[row])
        if len(kinds) < TOKEN_EXAMPLES:
            kinds.append(token_kind(*_piece(tokenizer, docs[d]["ids"], pos)))
        if d not in windows and len(windows) < MAX_CONTEXTS:
            windows[d] = (d, pos)
    return list(windows.values()), kinds


def concept_stats(tokenizer, docs: list[dict], doc_index: torch.Tensor, positions: torch.Tensor, examples,
                  vocabulary: str | Path = VOCABULARY_FILE) -> dict[int, ConceptStats]:
    """ConceptStats of every latent that fires (`examples`: `labeling.LatentExamples`)."""
    from esr_eval.embedding import embed

    topics, topic_vectors = _vocabulary_vectors(str(vocabulary))
    live = [k for k in range(examples.top_values.shape[0]) if examples.frequency[k] > 0]
    evidence = {}
    for k in tqdm(live, desc="concept evidence", unit="latent"):
        evidence[k] = _evidence(tokenizer, docs, doc_index, positions,
                                examples.top_values[k].tolist(), examples.top_rows[k].tolist())
    places = sorted({place for windows, _ in evidence.values() for place in windows})
    index = {place: i for i, place in enumerate(places)}
    texts = [_window(tokenizer, docs[d], pos) for d, pos in places]
    vectors = embed(texts, progress=True)  # each window once, however many latents share it
    out = {}
    for k, (windows, kinds) in evidence.items():
        v = vectors[[index[w] for w in windows]]
        mean = v.sum(0)
        mean = mean / (np.linalg.norm(mean) or 1.0)
        sims = topic_vectors @ mean
        best = int(sims.argmax())
        token_share = sum(kind is not None for kind in kinds) / max(1, len(kinds))
        out[k] = ConceptStats(coherence(v), token_share, topics[best], float(sims[best]), len(windows))
    return out


def baseline_coherence(tokenizer, docs: list[dict], doc_index: torch.Tensor, positions: torch.Tensor,
                       draws: int = 200, seed: int = 0) -> dict[str, float]:
    """Coherence of MAX_CONTEXTS windows at random positions of distinct documents: what a
    latent with no topic scores on this corpus (mean and 95th percentile over `draws`)."""
    from esr_eval.embedding import embed

    rng = random.Random(seed)
    n = len(doc_index)
    wanted = min(MAX_CONTEXTS, len(set(doc_index.tolist())))  # documents with a kept position
    picks = []
    for _ in range(draws):
        seen: dict[int, int] = {}
        while len(seen) < wanted:
            row = rng.randrange(n)
            seen.setdefault(int(doc_index[row]), int(positions[row]))
        picks.append(list(seen.items()))
    places = sorted({p for pick in picks for p in pick})
    index = {p: i for i, p in enumerate(places)}
    vectors = embed([_window(tokenizer, docs[d], pos) for d, pos in places])
    values = np.array([coherence(vectors[[index[p] for p in pick]]) for pick in picks])
    return {"mean": float(values.mean()), "p95": float(np.quantile(values, 0.95))}


def concept_label(stats: ConceptStats, token_label: str, rule: ConceptFilter = CONCEPT_FILTER) -> str:
    """The topic for a topical latent that fires on words; the firing tokens otherwise, with the
    topic of their contexts when those share one ("':' (in Python syntax)")."""
    if is_topical(stats, rule) and not is_token_level(stats, rule):
        return stats.topic
    if is_topical(stats, rule):
        return f"{token_label} (in {stats.topic})"
    return token_label
