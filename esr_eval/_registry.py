"""Inspect entry point: importing this registers the provider, offline grader, tasks and scorers."""

# ruff: noqa: F401
from esr_eval.judge.offline import OfflineJudgeAPI
from esr_eval.provider import steered
from esr_eval.scorers import attempts_judge
from esr_eval.scorers.judge_validation import judge_agreement, negatives_judge
from esr_eval.tasks.ablation import detector_ablation, random_ablation
from esr_eval.tasks.adversarial import adversarial_steering
from esr_eval.tasks.boost_sweep import boost_sweep
from esr_eval.tasks.judge_validation import judge_negatives, judge_validation
from esr_eval.tasks.matched_prefix import matched_prefix
from esr_eval.tasks.meta_prompt import meta_prompt
from esr_eval.tasks.prefill_detection import prefill_detection
from esr_eval.tasks.steering_resistance import no_steering, steering_resistance
