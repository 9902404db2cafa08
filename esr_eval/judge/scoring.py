"""How the offline grader scores one attempt (0-100): a ridge regression from features of the
attempt's text to the hand-labelled score band (0-4) of the judge-validation set's dev half, mapped
onto the rubric's scale through the bands' middles. The weights ship in
`esr_eval/assets/judge/attempt_scorer.json` with a record of how they were trained
(`esr-eval train-grader` rebuilds them; the test half is never read).

The features are what a sentence embedder and word counts can tell: how close the attempt is to
the prompt and to the steered concept (as a whole, sentence by sentence, and by the prompt's own
words), how much of it repeats, and whether it is degenerate.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from esr_eval.config import asset_path
from esr_eval.judge.text import fused_nonwords, is_degraded, repeated_trigram_share

WEIGHTS_PATH = asset_path("judge", "attempt_scorer.json")
ON_PROMPT = 0.3  # a sentence this close to the prompt is on it
PULLED = 0.2  # a sentence closer to the concept than to the prompt, and at least this close, is pulled
MARGIN_FLOOR = 0.1
BAND_SCORES = (5.0, 22.5, 47.5, 70.0, 90.0)  # middles of the rubric ranges of bands 0-4
FEATURES = (
    "prompt_sim", "concept_sim", "whole_prompt_sim", "whole_concept_sim", "mean_sentence_prompt_sim",
    "max_sentence_prompt_sim", "on_prompt_share", "pulled_share", "prompt_margin", "prompt_word_coverage",
    "prompt_word_sentences", "prompt_word_rate", "repeated_trigrams", "degenerate", "fused_words",
)  # fmt: skip

_STOP = frozenset(
    "a an the and or of to in on for with how do does you your is are be explain what why can i my me it its "
    "this that from by at as into about describe compare between main differences make".split()
)
_LETTERS = re.compile(r"[A-Za-z]+")


def _stem(word: str) -> str:
    word = word.lower()
    for suffix in ("ing", "es", "s", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def _keywords(text: str) -> set[str]:
    return {_stem(w) for w in _LETTERS.findall(text) if w.lower() not in _STOP and len(w) > 2}


def _mean_direction(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray:
    mean = (vectors * weights[:, None]).sum(axis=0)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm else mean


def attempt_features(
    prompt: str, sentences: list[str], sentence_vecs: np.ndarray, whole_vec: np.ndarray, prompt_vec: np.ndarray,
    concept_vec: np.ndarray,
) -> np.ndarray:  # fmt: skip
    """The FEATURES of one attempt from its sentences and their unit-length embeddings."""
    weights = np.array([max(len(s.split()), 1) for s in sentences], dtype=float)
    to_prompt, to_concept = sentence_vecs @ prompt_vec, sentence_vecs @ concept_vec
    mean = _mean_direction(sentence_vecs, weights)
    text = " ".join(sentences)
    keywords = _keywords(prompt)
    words = [_stem(w) for w in _LETTERS.findall(text)]
    values = {
        "prompt_sim": float(mean @ prompt_vec),
        "concept_sim": float(mean @ concept_vec),
        "whole_prompt_sim": float(whole_vec @ prompt_vec),
        "whole_concept_sim": float(whole_vec @ concept_vec),
        "mean_sentence_prompt_sim": float((to_prompt * weights).sum() / weights.sum()),
        "max_sentence_prompt_sim": float(to_prompt.max()),
        "on_prompt_share": float(weights[to_prompt > ON_PROMPT].sum() / weights.sum()),
        "pulled_share": float(weights[(to_concept > to_prompt) & (to_concept > PULLED)].sum() / weights.sum()),
        "prompt_margin": float((np.clip(to_prompt - np.maximum(to_concept, MARGIN_FLOOR), 0, None) * weights).sum() / weights.sum()),
        "prompt_word_coverage": len(keywords & set(words)) / len(keywords) if keywords else 0.0,
        "prompt_word_sentences": float(np.mean([bool(_keywords(s) & keywords) for s in sentences])) if keywords else 0.0,
        "prompt_word_rate": sum(w in keywords for w in words) / max(len(words), 1),
        "repeated_trigrams": repeated_trigram_share(text),
        "degenerate": float(is_degraded(text)),
        "fused_words": min(len(fused_nonwords(text)), 5) / 5.0,
    }  # fmt: skip
    return np.array([values[name] for name in FEATURES], dtype=float)


@dataclass(frozen=True)
class AttemptScorer:
    coef: np.ndarray
    intercept: float
    record: dict[str, Any]
    knots: tuple[float, ...] = tuple(float(b) for b in range(len(BAND_SCORES)))  # predicted band of each band's middle

    def band(self, features: np.ndarray) -> np.ndarray:
        """Predicted score band (a real number; 0-4 on the labelled range) of feature rows."""
        return np.atleast_2d(features) @ self.coef + self.intercept

    def score(self, features: np.ndarray) -> np.ndarray:
        """Scores 0-100: the predicted band mapped onto the rubric scale through `knots` (the median
        prediction of each labelled band on the dev half goes to that band's middle; a regression
        pulls toward the mean, this undoes it without changing the order), 0 and 100 half a band beyond."""
        k = np.asarray(self.knots, dtype=float)
        x = [k[0] - (k[1] - k[0]) / 2, *k, k[-1] + (k[-1] - k[-2]) / 2]
        return np.interp(self.band(features), x, [0.0, *BAND_SCORES, 100.0])

    def to_json(self) -> str:
        return json.dumps({"features": list(FEATURES), "coef": [round(float(c), 6) for c in self.coef],
                           "intercept": round(self.intercept, 6), "knots": [round(k, 6) for k in self.knots],
                           "record": self.record}, indent=1)  # fmt: skip

    @classmethod
    def read(cls, path: str | Path = WEIGHTS_PATH) -> "AttemptScorer":
        data = json.loads(Path(path).read_text())
        if list(data["features"]) != list(FEATURES):
            raise RuntimeError(f"{path} was trained on other features: rebuild it with `esr-eval train-grader`")
        return cls(np.asarray(data["coef"], dtype=float), float(data["intercept"]), dict(data.get("record") or {}),
                   tuple(float(k) for k in data["knots"]))  # fmt: skip


@functools.cache
def attempt_scorer() -> AttemptScorer:
    """The shipped scorer (read once per process)."""
    if not WEIGHTS_PATH.exists():
        raise RuntimeError(f"the offline grader's attempt scorer is missing ({WEIGHTS_PATH}): run `esr-eval train-grader`")
    return AttemptScorer.read(WEIGHTS_PATH)
