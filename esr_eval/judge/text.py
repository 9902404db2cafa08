"""Properties of answer text that the scorer and the offline grader share."""

from __future__ import annotations

import re

DEGRADED_RUN = 5  # identical consecutive words (longer than one char) that mark degraded output

_WORD = re.compile(r"[\w'-]+")


def is_degraded(text: str, run: int = DEGRADED_RUN) -> bool:
    """True when `run` or more identical consecutive words longer than one char occur."""
    streak, previous = 0, None
    for word in (w.lower() for w in _WORD.findall(text)):
        streak = streak + 1 if word == previous else 1
        previous = word
        if streak >= run and len(word) > 1:
            return True
    return False
