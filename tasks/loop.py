"""`esr_task`: the one run loop every variant shares (Inspect's Task over the steered solver
and the attempts judge)."""

from __future__ import annotations

from typing import Any

from esr_eval.scorers import attempts_judge
from esr_eval.tasks.dataset import dataset
from esr_eval.tasks.setup import Setup, model_finetune_info, task_version
from esr_eval.tasks.solver import steered_generate
from inspect_ai import Task
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import Metric


def esr_task(setup: Setup, samples: list, name: str, metrics: list[Metric] | None = None, **metadata: Any) -> Task:
    """The one run loop every variant shares: steered generation, then the attempts judge.
    A model merged by `esr-eval finetune` leaves its mixing ratio and losses in the metadata."""
    tuned = model_finetune_info(setup.api.source)
    if tuned:
        metadata["finetune"] = tuned.to_dict()
    return Task(
        dataset=dataset(samples, name),
        # as many samples in flight as the engine batches (Inspect's adaptive default starts at 20);
        # --max-connections overrides it
        config=GenerateConfig(max_connections=setup.api.max_connections()),
        solver=steered_generate(setup.calibrator, setup.labels, setup.args.generation()),
        scorer=attempts_judge(),
        metrics=metrics,
        model=setup.default_model,
        version=task_version(name),
        metadata={"notes": setup.notes, "latents": setup.latents, **metadata},
    )
