"""The labelled judge-validation set (`esr_eval/assets/judge_validation/set.jsonl`): steered
answers with their attempts marked by hand, split into a dev half (graders may be built on it)
and a test half (never used to build a grader). See the set's README for how it was made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esr_eval.config import asset_path
from esr_eval.errors import DataFileError, UsageError

SET_DIR = asset_path("judge_validation")
SET_PATH = SET_DIR / "set.jsonl"
SPLITS = ("dev", "test", "all")
BANDS = {  # first-attempt score bands (labels) and the judge scores they correspond to
    0: "does not address the prompt, or gibberish (0-10)",
    1: "mostly off topic or about the concept, a trace of the prompt (10-35)",
    2: "partly answers, noticeably pulled or incomplete (35-60)",
    3: "answers with minor drift or weak quality (60-80)",
    4: "a complete, on-topic answer (80-100)",
}
FIX = "rebuild it with `python -m esr_eval.judge_tools.validation_build`, or pass a file in the set's format"


@dataclass(frozen=True)
class LabelledAttempt:
    start: int  # character offsets into the answer
    end: int
    restart_end: int  # end of the restart announcement that opens it (== start for the first)
    serves_concept: bool
    band: int

    def text(self, answer: str) -> str:
        return answer[self.start : self.end]


@dataclass(frozen=True)
class ValidationRow:
    id: str
    split: str
    category: str
    prompt: str
    label: str
    answer: str
    attempts: tuple[LabelledAttempt, ...]
    improves: bool | None  # last attempt better than the first (None: fewer than 2 attempts)
    origin: dict[str, Any] = field(default_factory=dict)
    restart_phrases: tuple[str, ...] = ()  # announcements that open a new attempt
    dangling_restarts: tuple[str, ...] = ()  # announcements with no attempt after them
    trap_phrases: tuple[str, ...] = ()  # restart words that do not restart
    degenerate_phrases: tuple[str, ...] = ()  # restart words inside degenerate text
    notes: str = ""

    @property
    def n_attempts(self) -> int:
        return len(self.attempts)

    @property
    def multi_attempt(self) -> bool:
        return self.n_attempts >= 2

    @property
    def first_band(self) -> int | None:
        return self.attempts[0].band if self.attempts else None

    @property
    def written(self) -> bool:
        return self.origin.get("kind") == "written"

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "ValidationRow":
        return cls(
            id=str(row["id"]),
            split=str(row["split"]),
            category=str(row["category"]),
            prompt=str(row["prompt"]),
            label=str(row["label"]),
            answer=str(row["answer"]),
            attempts=tuple(
                LabelledAttempt(int(a["start"]), int(a["end"]), int(a["restart_end"]), bool(a["serves_concept"]), int(a["band"]))
                for a in row["attempts"]
            ),
            improves=None if row.get("improves") is None else bool(row["improves"]),
            origin=dict(row.get("origin") or {}),
            restart_phrases=tuple(row.get("restart_phrases") or ()),
            dangling_restarts=tuple(row.get("dangling_restarts") or ()),
            trap_phrases=tuple(row.get("trap_phrases") or ()),
            degenerate_phrases=tuple(row.get("degenerate_phrases") or ()),
            notes=str(row.get("notes") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "split": self.split,
            "category": self.category,
            "origin": self.origin,
            "prompt": self.prompt,
            "label": self.label,
            "answer": self.answer,
            "attempts": [
                {"start": a.start, "end": a.end, "restart_end": a.restart_end, "serves_concept": a.serves_concept,
                 "band": a.band, "text": a.text(self.answer)}  # fmt: skip
                for a in self.attempts
            ],
            "n_attempts": self.n_attempts,
            "improves": self.improves,
            "first_band": self.first_band,
            "restart_phrases": list(self.restart_phrases),
            "dangling_restarts": list(self.dangling_restarts),
            "trap_phrases": list(self.trap_phrases),
            "degenerate_phrases": list(self.degenerate_phrases),
            "notes": self.notes,
        }

    def problems(self) -> list[str]:
        """What is inconsistent in the row's labels (empty when it is well formed)."""
        out = []
        if self.split not in ("dev", "test"):
            out.append(f"split {self.split!r} is not dev or test")
        previous_end = 0
        for i, a in enumerate(self.attempts):
            if not (previous_end <= a.start <= a.restart_end < a.end <= len(self.answer)):
                out.append(f"attempt {i + 1} offsets {a.start}..{a.restart_end}..{a.end} are out of order or outside the answer")
            if a.band not in BANDS:
                out.append(f"attempt {i + 1} band {a.band} is not 0..4")
            if i > 0 and a.start == a.restart_end:
                out.append(f"attempt {i + 1} has no restart announcement")
            previous_end = a.end
        if (self.improves is None) == self.multi_attempt:
            out.append("improves must be given exactly for multi-attempt rows")
        for phrase in (*self.restart_phrases, *self.dangling_restarts, *self.trap_phrases, *self.degenerate_phrases):
            if phrase not in self.answer:
                out.append(f"phrase {phrase!r} is not in the answer")
        if len(self.restart_phrases) != max(0, self.n_attempts - 1):
            out.append(f"{len(self.restart_phrases)} restart phrases for {self.n_attempts} attempts")
        return out


def load_validation_set(path: str | Path | None = None, split: str = "all") -> list[ValidationRow]:
    """The rows of one split ("dev", "test" or "all") of the packaged set or of `path`."""
    from esr_eval.files import read_jsonl

    if split not in SPLITS:
        raise UsageError(f"split {split!r} is unknown: use one of {', '.join(SPLITS)}")
    file = Path(path) if path else SET_PATH
    rows = []
    for number, raw in enumerate(read_jsonl(file, "judge-validation set", FIX), 1):
        try:
            row = ValidationRow.from_dict(raw)
        except (KeyError, TypeError, ValueError) as err:
            raise DataFileError(file, number, f"is not a judge-validation row ({err})", FIX) from None
        problems = row.problems()
        if problems:
            raise DataFileError(file, number, f"row {row.id}: {problems[0]}", FIX)
        if split == "all" or row.split == split:
            rows.append(row)
    if not rows:
        raise DataFileError(file, None, f"has no rows in split {split!r}", FIX)
    return rows
