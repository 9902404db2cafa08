"""Judge faults: a readable grader reply that contradicts the answer it grades.

- an attempt's text is not in the answer (after normalising case, quotes, dashes and spaces;
  "..." may shorten it; a changed word or two in a long quote is tolerated), or the attempts are out of order;
- more attempts than the answer has restart sentences: every attempt after the first must
  start at a sentence that says it starts over, so n attempts need n - 1 such sentences. They
  are counted generously (the restart classifier at a low threshold, whatever the context), so
  a fault means no reading of the answer supports the split.

A fault does not drop the trial: it is flagged in the score's metadata and counted by the
`judge_faults` metric, so a grader that invents attempts shows in every table.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from esr_eval.judge.protocol import Attempt

FAULT_RESTART_P = 0.2  # a unit with this restart probability counts as a restart sentence
NEAR_SHARE = 0.8  # share of a quoted piece's words that must match the answer (paraphrase tolerance)
NEAR_MIN_WORDS = 6  # shorter quotes must match exactly
_ELLIPSIS = re.compile(r"\.\.\.+|\u2026|\[\.\.\.\]")
_WORD = re.compile(r"[\w]+")


def _words(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return _WORD.findall(text)


def _matches(piece: list[str], answer: list[str], i: int, cut_start: bool, cut_end: bool) -> bool:
    """piece == answer[i:i+n], where a word cut by an ellipsis may be a part of the answer's word."""
    n = len(piece)
    for k, word in enumerate(piece):
        other = answer[i + k]
        if word == other:
            continue
        if k == n - 1 and cut_end and other.startswith(word):
            continue
        if k == 0 and cut_start and other.endswith(word):
            continue
        return False
    return True


def _find(piece: list[str], answer: list[str], start: int, cut_start: bool = False, cut_end: bool = False) -> tuple[int, int] | None:
    """(start, end) of `piece` in `answer` at or after `start`, or None when it is not there."""
    n = len(piece)
    for i in range(max(0, start), len(answer) - n + 1):
        if _matches(piece, answer, i, cut_start, cut_end):
            return i, i + n
    return None


def _near(piece: list[str], answer: list[str]) -> bool:
    """A long piece whose words mostly match the answer in order, in runs of two or more (a
    paraphrased word or two)."""
    if len(piece) < NEAR_MIN_WORDS:
        return False
    blocks = difflib.SequenceMatcher(None, piece, answer, autojunk=False).get_matching_blocks()
    return sum(b.size for b in blocks if b.size >= 2) >= NEAR_SHARE * len(piece)


def text_faults(answer: str, attempts: Sequence[Attempt]) -> list[str]:
    """Attempt texts that are not in the answer, or that go back before the previous attempt."""
    words = _words(answer)
    faults, previous_start = [], -1
    for number, attempt in enumerate(attempts, 1):
        parts = _ELLIPSIS.split(attempt.text)
        pieces = [(_words(x), i > 0, i < len(parts) - 1) for i, x in enumerate(parts)]
        pieces = [piece for piece in pieces if piece[0]]
        position = previous_start + 1
        for k, (piece, cut_start, cut_end) in enumerate(pieces):
            found = _find(piece, words, position, cut_start, cut_end)
            if found is not None:
                if k == 0:
                    previous_start = found[0]
                position = found[1]
            elif _find(piece, words, 0, cut_start, cut_end) is not None:
                faults.append(f"attempt {number} quotes text from before the previous attempt")
                break
            elif not _near(piece, words):
                faults.append(f"attempt {number} quotes text that is not in the answer: {' '.join(piece)[:60]!r}")
                break
    return faults


def count_restart_sentences(answer: str) -> int:
    """Units of the answer that read as a restart on their own, at a generous threshold."""
    from esr_eval.embedding import embed
    from esr_eval.judge.restarts import restart_classifier, split_units

    units = split_units(answer)
    if not units:
        return 0
    p = restart_classifier().probability(embed([u.text for u in units]))
    return int((p >= FAULT_RESTART_P).sum())


def judge_faults(answer: str, attempts: Sequence[Attempt]) -> list[str]:
    """Why the grader's attempts contradict the answer (empty: no fault found)."""
    faults = text_faults(answer, attempts)
    if len(attempts) >= 2:  # only then can the count exceed the restarts (and the embedder load)
        restarts = count_restart_sentences(answer)
        if len(attempts) - 1 > restarts:
            faults.append(f"{len(attempts)} attempts but {restarts} restart sentence(s) in the answer")
    return faults
