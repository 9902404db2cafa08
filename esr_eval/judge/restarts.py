"""Where an answer says it is starting over: the answer cut into units (sentences and clauses)
and a logistic-regression classifier over each unit's sentence embedding that says how likely
the unit announces a restart. The weights ship in `esr_eval/assets/judge/restart_classifier.json`
with a record of how they were trained (`esr-eval train-grader` rebuilds them).

The classifier reads a unit alone; whether a restart-like unit really opens a new attempt
(something follows it, the text around it is not degenerate, it leaves text that had drifted)
is decided by the offline grader, which sees the context.
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

ASSETS = asset_path("judge")
WEIGHTS_PATH = ASSETS / "restart_classifier.json"
SENTENCES_PATH = ASSETS / "restart_sentences.txt"

# A unit ends at a sentence end, a line break, a colon or semicolon; a spaced dash opens one.
_BREAK = re.compile(r"(?<=[.!?\u2026])[\"'\u201d\u2019)\]]*\s+|(?<=[;:])\s+|\s+(?=(?:[\u2014\u2013]|--)\s)|\n+")
_WORD = re.compile(r"[\w'-]+")


@dataclass(frozen=True)
class Unit:
    start: int  # offsets into the answer
    end: int
    text: str

    @property
    def words(self) -> int:
        return len(_WORD.findall(self.text))


def split_units(answer: str) -> list[Unit]:
    """The answer's sentences and clauses with their offsets, in order (empty pieces dropped)."""
    units, pos = [], 0
    for match in [*_BREAK.finditer(answer), None]:
        end = len(answer) if match is None else match.start()
        piece = answer[pos:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            units.append(Unit(pos + lead, pos + len(piece.rstrip()), piece.strip()))
        if match is not None:
            pos = match.end()
    return units


def normalise(text: str) -> str:
    """Lower case, plain quotes and dashes, words only: how phrasings are compared."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(_WORD.findall(text))


@dataclass(frozen=True)
class RestartClassifier:
    coef: np.ndarray
    intercept: float
    record: dict[str, Any]

    def probability(self, vectors: np.ndarray) -> np.ndarray:
        """P(restart) of each unit from its unit-length embedding (rows of `vectors`)."""
        if len(vectors) == 0:
            return np.zeros(0)
        return 1.0 / (1.0 + np.exp(-(vectors @ self.coef + self.intercept)))

    def to_json(self) -> str:
        return json.dumps({"coef": [round(float(c), 6) for c in self.coef], "intercept": round(self.intercept, 6),
                           "record": self.record}, indent=1)  # fmt: skip

    @classmethod
    def read(cls, path: str | Path = WEIGHTS_PATH) -> "RestartClassifier":
        data = json.loads(Path(path).read_text())
        return cls(np.asarray(data["coef"], dtype=np.float32), float(data["intercept"]), dict(data.get("record") or {}))


@functools.cache
def restart_classifier() -> RestartClassifier:
    """The shipped classifier (read once per process)."""
    if not WEIGHTS_PATH.exists():
        raise RuntimeError(f"the offline grader's restart classifier is missing ({WEIGHTS_PATH}): run `esr-eval train-grader`")
    return RestartClassifier.read(WEIGHTS_PATH)


def read_training_sentences(path: str | Path = SENTENCES_PATH) -> list[tuple[str, bool]]:
    """(sentence, is_restart) pairs of the sentence file ("+ text" / "- text"; "#" comments)."""
    pairs = []
    for line in Path(path).read_text().splitlines():
        if line.startswith(("+ ", "- ")):
            pairs.append((line[2:].strip(), line[0] == "+"))
    return pairs
