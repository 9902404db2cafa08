"""Scorers and metrics for ESR: the attempts judge and the ESR metrics (thin Inspect wrappers
over `esr_eval.judge` and `esr_eval.results`)."""

from esr_eval.scorers.attempts import attempts_judge, trial_value
from esr_eval.scorers.metrics import (
    adversarial_metrics,
    esr_metrics,
    grouped_esr_metrics,
)

__all__ = ["adversarial_metrics", "attempts_judge", "esr_metrics", "grouped_esr_metrics", "trial_value"]
