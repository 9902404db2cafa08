"""Scorers and metrics for ESR: the attempts judge, its protocol, and the ESR metrics."""

from esr_eval.scorers.attempts import OFFLINE_GRADER, attempts_judge, is_degraded, score_value
from esr_eval.scorers.judge import (
    Attempt,
    JudgeParseError,
    JudgeResult,
    judge_answer,
    parse_attempts,
    rubric_message,
    rubric_sections,
)
from esr_eval.scorers.metrics import (
    adversarial_metrics,
    esr_metrics,
    grouped_esr_metrics,
    wilson_interval,
)

__all__ = [
    "OFFLINE_GRADER",
    "Attempt",
    "JudgeParseError",
    "JudgeResult",
    "adversarial_metrics",
    "attempts_judge",
    "esr_metrics",
    "grouped_esr_metrics",
    "is_degraded",
    "judge_answer",
    "parse_attempts",
    "rubric_message",
    "rubric_sections",
    "score_value",
    "wilson_interval",
]
