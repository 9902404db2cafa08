"""Properties of answer text that the scorer and the offline grader share: whether an answer is
degenerate (the paper's 5+ identical consecutive words, and what small steered models produce
instead: fused non-words, looping fragments)."""

from __future__ import annotations

import functools
import re

DEGRADED_RUN = 5  # identical consecutive words (longer than one char) that mark degraded output
LOOP_SHARE = 0.35  # share of repeated word trigrams that marks text as looping
LOOP_MIN_WORDS = 12  # shorter text is not judged for loops
FUSED_PIECES = 6  # a lower-case letters-only word that splits into this many word pieces is fused
FUSED_WORDS = 2  # fused non-words that mark an answer as degenerate

_WORD = re.compile(r"[\w'-]+")
_LETTERS = re.compile(r"(?<![\w'-])[a-z]{10,}(?![\w'-])")
_CHAIN = re.compile(r"(?<![\w-])[a-z]+(?:-[a-z]+){%d,}(?![\w-])" % (FUSED_PIECES - 1))  # six or more words hyphenated


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def longest_word_run(text: str) -> int:
    """The longest run of one word (longer than one char) repeated back to back."""
    longest, streak, previous = 0, 0, None
    for word in words(text):
        streak = streak + 1 if word == previous else 1
        previous = word
        if len(word) > 1:
            longest = max(longest, streak)
    return longest


def repeated_trigram_share(text: str) -> float:
    tokens = words(text)
    trigrams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    if not trigrams:
        return 0.0
    return 1.0 - len(set(trigrams)) / len(trigrams)


@functools.cache
def _word_pieces() -> frozenset[str]:
    """The WordPiece vocabulary of the offline embedder (about 30,000 English words and pieces),
    read from its package; empty when that package is missing (fused words are then not told)."""
    try:
        from esr_eval.embedding import embedder_dir

        return frozenset((embedder_dir() / "vocab.txt").read_text(encoding="utf-8").split("\n"))
    except (RuntimeError, OSError):
        return frozenset()


def word_pieces(word: str) -> int:
    """Pieces of a greedy longest-match WordPiece split (BERT's rule; written here because loading
    a tokenizer for a word count would cost more than the count)."""
    vocab, count, i = _word_pieces(), 0, 0
    while i < len(word):
        for j in range(len(word), i, -1):
            if (word[i:j] if i == 0 else "##" + word[i:j]) in vocab:
                count, i = count + 1, j
                break
        else:
            return len(word)  # no piece fits: as unknown as a word can be
    return count


def fused_nonwords(text: str) -> list[str]:
    """Long lower-case words that are no word ("thecatasoussopadhistant") and chains of six or more
    hyphenated words ("start-of-action-when-we-already-have"): run-together fragments of
    degenerate steered text. Identifiers (snake_case, camelCase, digits) are not counted."""
    chains = _CHAIN.findall(text)
    if not _word_pieces():
        return chains
    return [w for w in _LETTERS.findall(text) if word_pieces(w) >= FUSED_PIECES] + chains


def is_looping(text: str) -> bool:
    return len(words(text)) >= LOOP_MIN_WORDS and repeated_trigram_share(text) > LOOP_SHARE


def is_degraded(text: str, run: int = DEGRADED_RUN) -> bool:
    """Degenerate output: `run` or more identical consecutive words (the paper's rule), fused
    non-words, or a looping text whose word trigrams mostly repeat."""
    return longest_word_run(text) >= run or len(fused_nonwords(text)) >= FUSED_WORDS or is_looping(text)
