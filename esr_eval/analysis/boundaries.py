"""Find where each judged attempt starts inside an answer, in characters and in tokens.

The judge copies attempt texts, but not always verbatim (quotes, spacing, punctuation, a
trimmed sentence). Matching runs on a normalised view (lower case, letters and digits, one
space for any run of anything else) that maps back to the answer's characters; a shorter
prefix, then difflib's longest common blocks, take over when the full text is not found.
"""

from __future__ import annotations

import bisect
from difflib import SequenceMatcher
from typing import Any

PROBES = (None, 80, 40, 20, 12)  # prefix lengths tried in order (None: the whole text)
MIN_BLOCK = 8  # shortest difflib block that counts as a fuzzy match


def normalise_with_offsets(text: str) -> tuple[str, list[int]]:
    """Normalised text and, per normalised character, its index in `text`."""
    chars: list[str] = []
    index: list[int] = []
    for i, ch in enumerate(text):
        if ch.isalnum():
            chars.append(ch.lower())
            index.append(i)
        elif chars and chars[-1] != " ":
            chars.append(" ")
            index.append(i)
    while chars and chars[-1] == " ":
        chars.pop()
        index.pop()
    return "".join(chars), index


def locate(answer: str, text: str, start: int = 0) -> int | None:
    """Character offset in `answer` (at or after `start`) where `text` begins, or None."""
    norm_a, index = normalise_with_offsets(answer)
    norm_t, _ = normalise_with_offsets(text)
    if not norm_t or not norm_a:
        return None
    from_pos = bisect.bisect_left(index, start)
    for length in PROBES:
        probe = norm_t if length is None else norm_t[:length]
        if length is not None and len(norm_t) <= length:
            continue  # already tried as the whole text
        found = norm_a.find(probe, from_pos)
        if found >= 0:
            return index[found]
    blocks = SequenceMatcher(None, norm_a[from_pos:], norm_t[:200], autojunk=False).get_matching_blocks()
    for block in blocks:
        if block.size >= MIN_BLOCK:
            pos = from_pos + max(0, block.a - block.b)
            pos = min(pos, len(norm_a) - 1)
            if norm_a[pos] == " ":
                pos += 1
            return index[pos]
    return None


def locate_end(answer: str, text: str, start: int = 0) -> int | None:
    """Character offset just after the end of `text` in `answer`, from its tail."""
    norm_a, index = normalise_with_offsets(answer)
    norm_t, _ = normalise_with_offsets(text)
    if not norm_t:
        return None
    from_pos = bisect.bisect_left(index, start)
    for length in (None, 40, 20, 12):
        probe = norm_t if length is None else norm_t[-length:]
        found = norm_a.find(probe, from_pos)
        if found >= 0:
            return index[found + len(probe) - 1] + 1
    return None


def _text(attempt: dict[str, Any] | str) -> str:
    return attempt if isinstance(attempt, str) else str(attempt.get("text", ""))


def attempt_starts(answer: str, attempts: list[dict[str, Any]] | list[str]) -> list[int | None]:
    """Start offsets of the attempts: each is searched after the previous attempt's end (else after
    its start); when its own text is not found, it begins where the previous one ends."""
    starts: list[int | None] = []
    prev_start: int | None = None
    prev_end: int | None = None
    for attempt in attempts:
        text = _text(attempt)
        cursors = [0] if prev_start is None else [c for c in (prev_end, prev_start + 1) if c is not None]
        pos = next((p for p in (locate(answer, text, c) for c in cursors) if p is not None), None)
        if pos is None and prev_end is not None:
            while prev_end < len(answer) and not answer[prev_end].isalnum():
                prev_end += 1
            pos = prev_end if prev_end < len(answer) else None
        starts.append(pos)
        if pos is not None:
            prev_start, prev_end = pos, locate_end(answer, text, pos)
    return starts


def char_to_token(offsets: list[tuple[int, int]], char: int) -> int:
    """Index of the token that holds character `char` (or the first token after it)."""
    for t, (_, end) in enumerate(offsets):
        if end > char:
            return t
    return len(offsets)


def token_offsets(tokenizer, answer: str) -> list[tuple[int, int]]:
    """(start, end) characters of each token of `answer`, tokenised as the engine reads it."""
    try:
        enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(o) for o in enc["offset_mapping"]]
    except (NotImplementedError, TypeError, KeyError):  # slow tokenizers: decode prefixes
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ends = [len(tokenizer.decode(ids[: t + 1])) for t in range(len(ids))]
        return [(ends[t - 1] if t else 0, e) for t, e in enumerate(ends)]


def boundary_tokens(tokenizer, answer: str, attempts: list) -> list[int | None]:
    """Token index where each attempt starts (None where its text was not found)."""
    offsets = token_offsets(tokenizer, answer)
    return [None if c is None else char_to_token(offsets, c) for c in attempt_starts(answer, attempts)]


def continuation_attempts(answer: str, attempts: list, boundary: int) -> tuple[list[int], int]:
    """Which judged attempts of `answer` (a prefix of `boundary` characters, then its
    continuation) count for the continuation: the attempt the continuation begins in and every
    attempt that starts at or after the boundary, as indices into `attempts`; and how many later
    attempts start inside the prefix (or could not be located), which are not counted."""
    starts = attempt_starts(answer, attempts)
    opening = 0  # the attempt the continuation begins in: the last one located before the boundary
    later: list[int] = []
    not_counted = 0
    for i, start in enumerate(starts[1:], 1):
        if start is not None and start >= boundary:
            later.append(i)
        else:
            not_counted += 1
            if start is not None and not later:
                opening = i
    return ([opening] if attempts else []) + later, not_counted
