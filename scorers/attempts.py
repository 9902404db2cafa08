"""`attempts_judge`: the ESR scorer. A grader model (role "grader") splits the steered answer
into attempts and scores each; the Score value holds the per-trial ESR numbers."""

from __future__ import annotations

import re

from inspect_ai.model import get_model
from inspect_ai.scorer import Score, Scorer, Target, scorer
from inspect_ai.solver import TaskState

from esr_eval.scorers.judge import JudgeResult, judge_answer
from esr_eval.scorers.metrics import esr_metrics

OFFLINE_GRADER = "esr_judge/minilm"
GRADER_ROLE = "grader"
COPIED_METADATA = ("latent", "boost")
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


def score_value(result: JudgeResult, answer: str) -> dict[str, float]:
    """The per-trial numbers (all floats); a judge error gives judge_error=1 and zeros."""
    degraded = float(is_degraded(answer))
    if result.error:
        value = dict.fromkeys(
            [
                "n_attempts",
                "first_score",
                "last_score",
                "multi_attempt",
                "esr",
                "improvement",
                "first_serves_concept",
                "last_serves_concept",
            ],
            0.0,
        )
        return {**value, "degraded": degraded, "judge_error": 1.0}
    attempts = result.attempts
    first = attempts[0].score if attempts else 0.0
    last = attempts[-1].score if attempts else 0.0
    multi = len(attempts) >= 2
    return {
        "n_attempts": float(len(attempts)),
        "first_score": float(first),
        "last_score": float(last),
        "multi_attempt": float(multi),
        "esr": float(multi and last > first),
        "improvement": float(last - first) if multi else 0.0,
        "degraded": degraded,
        "judge_error": 0.0,
        "first_serves_concept": float(bool(attempts) and attempts[0].serves_concept),
        "last_serves_concept": float(bool(attempts) and attempts[-1].serves_concept),
    }


def explanation(result: JudgeResult, grader: str, max_chars: int = 300) -> str:
    if result.error:
        return f"judge error after {result.n_calls} calls to {grader}: {result.error_message}"
    if not result.attempts:
        return f"no attempt ({grader})"
    lines = [f"{len(result.attempts)} attempt(s), graded by {grader}:"]
    for i, attempt in enumerate(result.attempts, 1):
        text = " ".join(attempt.text.split())
        text = text if len(text) <= max_chars else text[: max_chars - 3] + "..."
        concept = ", serves concept" if attempt.serves_concept else ""
        lines.append(f"{i}. [{attempt.score:g}{concept}] {text}")
    return "\n".join(lines)


@scorer(metrics=esr_metrics())
def attempts_judge(grader: str | None = None) -> Scorer:
    """Judge the answer's attempts against the pushed concept (sample metadata "label").

    Args:
      grader: Grader model used when no `grader` model role is given
        (default: the offline grader `esr_judge/minilm`, never the evaluated model).
    """

    async def score(state: TaskState, target: Target) -> Score:
        label = state.metadata.get("label")
        if label is None:
            raise ValueError("sample metadata has no 'label': the attempts judge needs the steered concept's label")
        model = get_model(role=GRADER_ROLE, default=grader or OFFLINE_GRADER)
        answer = state.output.completion
        prompt = state.metadata.get("prompt", state.input_text)  # without any meta-prompt suffix
        result = await judge_answer(model, prompt, answer, str(label))
        grader_name = str(model)
        metadata = {
            "grader": grader_name,
            "raw": result.raw,
            "attempts": result.attempts_as_dicts(),
            "label": label,
            "judge_calls": result.n_calls,
            "scores_clipped": result.clipped,
            **{k: state.metadata[k] for k in COPIED_METADATA if k in state.metadata},
        }
        if result.error_message:
            metadata["judge_error_message"] = result.error_message
        return Score(
            value=score_value(result, answer),
            answer=answer,
            explanation=explanation(result, grader_name),
            metadata=metadata,
        )

    return score
