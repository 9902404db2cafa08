"""What the continuation controls (prefill_detection, matched_prefix) share: reading their source
answers before the model loads, and the samples of one source answer (a pair) under each
condition, all with one seed."""

from __future__ import annotations

import random
from typing import Any

from inspect_ai.dataset import Sample

from esr_eval.errors import UsageError
from esr_eval.sampling.prefixes import check_models, read_source
from esr_eval.sampling.seeds import derive_seed
from esr_eval.schema import SampleMetadata, SourceAnswer
from esr_eval.tasks.dataset import steered_concept
from esr_eval.tasks.task_setup import Setup, prepare, steered_model

# -T args of every ESR task that a continuation of source answers does not use
SAMPLING_ARGS = ("prompts", "n_latents", "prompts_per_latent", "latents", "relevance", "concreteness")
CALIBRATION_ARGS = ("target", "calibration_trials", "calibration_rounds")


def refuse_args(task: str, common: dict[str, Any], names: tuple[str, ...], why: str) -> None:
    given = [n for n in names if n in common]
    if given:
        raise UsageError(f"{task} {why}: drop -T {given[0]}")


def evaluated_model() -> str:
    """The evaluated model's source (preset, hub id or path), known without loading it."""
    return steered_model()[1].source


def source_answers(source: str | None, what: str) -> list[SourceAnswer]:
    """The answers of `-T source` (a prefix set .jsonl, a log or a log folder), of this model."""
    if source is None:
        raise ValueError("source_answers needs a source")
    answers = read_source(source)
    check_models(answers, evaluated_model(), what)
    return answers


def choose(answers: list[SourceAnswer], n: int | None, seed: int) -> list[SourceAnswer]:
    """`n` answers drawn with the task's seed (all when n is None), in a stable order."""
    ordered = sorted(answers, key=lambda a: a.id)
    if n is None or n >= len(ordered):
        return ordered
    if n < 1:
        raise UsageError(f"asked for {n} source answers: pass 1 or more")
    picked = set(random.Random(derive_seed(seed, "source answers")).sample(range(len(ordered)), n))
    return [a for i, a in enumerate(ordered) if i in picked]


def prepare_on(task: str, common: dict[str, Any], own: tuple[str, ...], answers: list[SourceAnswer]) -> Setup:
    """The model, dictionary and calibrator, with the source answers' latents pinned."""
    latents = sorted({a.latent for a in answers if a.latent is not None})
    if not latents:
        raise UsageError(f"{task}: the source answers name no steered latent: pass logs of a steered run")
    return prepare(task, {**common, "latents": latents}, own)


def pair_samples(setup: Setup, answer: SourceAnswer, conditions: list[dict[str, Any]], task: str, **shared: Any) -> list[Sample]:
    """One sample per condition (its metadata: "condition" and what it changes), all with the
    pair's seed; the judge sees the plain prompt and the steered concept's label."""
    latent, label = shared.pop("latent", answer.latent), shared.pop("label", answer.label)
    seed = derive_seed(setup.args.seed, task, answer.id)
    return [
        Sample(
            id=f"{answer.id}-{c['condition']}",
            input=answer.prompt,
            target=steered_concept(latent, label) if latent is not None else label,
            metadata=SampleMetadata(
                latent=latent,
                label=label,
                prompt=answer.prompt,
                prompt_id=answer.prompt_id,
                pair=answer.id,
                seed=seed,
                mode="add",
                extra={"variant": task, "source": answer.origin},
            ).to_metadata()
            | shared
            | c,
        )
        for c in conditions
    ]
