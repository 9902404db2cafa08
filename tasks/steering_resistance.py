"""esr_eval/steering_resistance (the paper's experiment 1) and esr_eval/no_steering (its control)."""

from __future__ import annotations

from typing import Any

from inspect_ai import Task, task

from esr_eval.config import TaskArgs
from esr_eval.tasks.dataset import build_samples
from esr_eval.tasks.task_builder import esr_task
from esr_eval.tasks.task_setup import prepare

D = TaskArgs  # the defaults live in config.TaskArgs


@task
def steering_resistance(
    prompts: str | None = D.prompts,
    n_latents: int = D.n_latents,
    prompts_per_latent: int = D.prompts_per_latent,
    latents: list[int] | str | None = D.latents,
    seed: int = D.seed,
    relevance: str = D.relevance,
    concreteness: str = D.concreteness,
    target: float = D.target,
    calibration_trials: int = D.calibration_trials,
    calibration_rounds: int = D.calibration_rounds,
    threshold_cache: str | None = D.threshold_cache,
    max_tokens: int = D.max_tokens,
    temperature: float = D.temperature,
    top_p: float = D.top_p,
    **unknown: Any,
) -> Task:
    """Steer each sampled latent at its calibrated threshold; judge the attempts in each answer.

    Args:
      prompts: prompt file (txt one per line, jsonl or csv); default: the packaged set.
      n_latents: latents to sample (the paper: about 80 per model).
      prompts_per_latent: prompts per latent (the paper: about 60).
      latents: pin these latents instead of sampling.
      seed: seeds latent sampling, prompt choice and each trial's generation.
      relevance: "topk" drops latents in the top 100 on any prompt; "strict" keeps only
        latents exactly zero on every prompt.
      concreteness: "offline" (default) keeps latents whose top contexts share a topic and
        that fire on words, not punctuation, digits, function words or word pieces (from the
        dictionary's latent_stats.json); "none" keeps all; a model (e.g. openai/gpt-4o-mini)
        rates each label instead and keeps >= 65.
      target: first-attempt score (0-1) that calibration aims at.
      calibration_trials: judge calls per latent in calibration, over all rounds.
      calibration_rounds: sequential calibration rounds (1-4), each probing several boosts at once.
      threshold_cache: jsonl file of thresholds (default: the user cache dir).
      max_tokens: new tokens per answer.
      temperature: sampling temperature.
      top_p: nucleus sampling share (1: off).
    """
    args = {k: v for k, v in locals().items() if k != "unknown"} | unknown
    setup = prepare("steering_resistance", args)
    return esr_task(setup, build_samples(setup), "steering_resistance")


@task
def no_steering(**common: Any) -> Task:
    """Control: the same latents, prompts and seeds with zero boost; the judge still sees the label.
    Takes the same args as steering_resistance."""
    setup = prepare("no_steering", common)
    return esr_task(setup, build_samples(setup, boost_rule="zero"), "no_steering")
