"""esr_eval/steering_resistance (the paper's experiment 1) and esr_eval/no_steering (its control)."""

from __future__ import annotations

from inspect_ai import Task, task

from esr_eval.scorers import attempts_judge
from esr_eval.tasks.common import Setup, build_samples, dataset, prepare, steered_generate



def esr_task(setup: Setup, samples: list, name: str, **metadata) -> Task:
    """The one run loop every variant shares: steered generation, then the attempts judge."""
    return Task(
        dataset=dataset(samples, name),
        solver=steered_generate(setup.calibrator, setup.labels, setup.generation),
        scorer=attempts_judge(),
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
    """Steer each sampled latent at its calibrated threshold; judge the attempts in each answer."""
    setup = prepare(prompts, n_latents, latents, seed, relevance, concreteness, target, calibration_trials, threshold_cache, max_tokens, temperature)
    return esr_task(setup, build_samples(setup, int(prompts_per_latent), int(seed)), "steering_resistance")


@task
def no_steering(
    prompts: str | None = None,
    n_latents: int = 8,
    prompts_per_latent: int = 5,
    latents: list[int] | str | None = None,
    seed: int = 0,
    relevance: str = "topk",
    concreteness: str | None = None,
    max_tokens: int = 384,
    temperature: float = 0.6,
) -> Task:
    """Control: the same latents, prompts and seeds with zero boost; the judge still sees the label."""
    setup = prepare(prompts, n_latents, latents, seed, relevance, concreteness, 0.3, 1, None, max_tokens, temperature)
    samples = build_samples(setup, int(prompts_per_latent), int(seed), boost_rule="zero")
    return esr_task(setup, samples, "no_steering")
