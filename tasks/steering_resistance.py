"""esr_eval/steering_resistance (the paper's experiment 1) and esr_eval/no_steering (its control)."""

from __future__ import annotations

from typing import Any

from inspect_ai import Task, task
from inspect_ai.scorer import Metric

from esr_eval.finetune import finetune_summary
from esr_eval.scorers import attempts_judge
from esr_eval.tasks.common import Setup, build_samples, dataset, prepare, steered_generate


def esr_task(setup: Setup, samples: list, name: str, metrics: list[Metric] | None = None, **metadata: Any) -> Task:
    """The one run loop every variant shares: steered generation, then the attempts judge.
    A model merged by `esr-eval finetune` leaves its mixing ratio and losses in the metadata."""
    tuned = finetune_summary(setup.api.engine.name)
    if tuned:
        metadata["finetune"] = tuned
    return Task(
        dataset=dataset(samples, name),
        solver=steered_generate(setup.calibrator, setup.labels, setup.generation),
        scorer=attempts_judge(),
        metrics=metrics,
        model=setup.default_model,
        metadata={"notes": setup.notes, "latents": setup.latents, **metadata},
    )


@task
def steering_resistance(
    prompts: str | None = None,
    n_latents: int = 8,
    prompts_per_latent: int = 5,
    latents: list[int] | str | None = None,
    seed: int = 0,
    relevance: str = "topk",
    concreteness: str | None = None,
    target: float = 0.3,
    calibration_trials: int = 10,
    threshold_cache: str | None = None,
    max_tokens: int = 384,
    temperature: float = 0.6,
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
      concreteness: a model (e.g. openai/gpt-4o-mini) that rates labels; keeps >= 65.
      target: first-attempt score (0-1) that calibration aims at.
      calibration_trials: most judge calls per latent in calibration.
      threshold_cache: jsonl file of thresholds (default: the user cache dir).
      max_tokens: new tokens per answer.
      temperature: sampling temperature.
    """
    args = {k: v for k, v in locals().items()}
    setup = prepare(**args)
    return esr_task(setup, build_samples(setup), "steering_resistance")


@task
def no_steering(**common: Any) -> Task:
    """Control: the same latents, prompts and seeds with zero boost; the judge still sees the label.
    Takes the same args as steering_resistance."""
    setup = prepare(**common)
    return esr_task(setup, build_samples(setup, boost_rule="zero"), "no_steering")
