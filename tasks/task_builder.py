"""`esr_task`: the one run loop every variant shares (Inspect's Task over the steered solver
and the attempts judge)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from inspect_ai import Task
from inspect_ai.log import HeadlineMetric
from inspect_ai.model import GenerateConfig
from inspect_ai.scorer import Metric
from inspect_ai.viewer import TaskSamplesColumn, TaskSamplesView, ViewerConfig

from esr_eval.results.stats import ESR_METRIC_NAMES
from esr_eval.schema import TrialValue
from esr_eval.scorers import attempts_judge
from esr_eval.tasks.dataset import dataset
from esr_eval.tasks.solver import steered_generate
from esr_eval.tasks.task_setup import Setup, model_finetune_info, task_version

SCORER = "attempts_judge"
# the samples list: the steered concept (target), the answer, then the boost and the trial's main
# numbers; the other trial fields follow (inspect-ai 0.3.285's viewer shows every score key, so
# `visible=False` orders them last rather than hiding them)
SHOWN_SCORES = ("boost", "esr", "multi_attempt", "n_attempts", "first_score", "last_score")
HIDDEN_SCORES = tuple(f.name for f in fields(TrialValue) if f.name not in SHOWN_SCORES)


def viewer_config() -> ViewerConfig:
    columns = [TaskSamplesColumn(id=c) for c in ("sampleId", "target", "input", "answer")]
    columns += [TaskSamplesColumn.score(SCORER, key) for key in SHOWN_SCORES]
    columns += [TaskSamplesColumn.score(SCORER, key, visible=False) for key in HIDDEN_SCORES]
    return ViewerConfig(task_samples_view=TaskSamplesView(name="trials", columns=columns))


def headline_metric(metrics: list[Metric] | None, headline: str | None = None) -> HeadlineMetric:
    """ESR rate: the log list's one number per run (over all groups where metrics are grouped),
    unless the task names its own."""
    name = ESR_METRIC_NAMES[0]
    return HeadlineMetric(scorer=SCORER, metric=headline or (name if metrics is None else f"{name}[all]"))


def esr_task(
    setup: Setup, samples: list, name: str, metrics: list[Metric] | None = None, headline: str | None = None, **metadata: Any
) -> Task:
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
        metrics=metrics,  # type: ignore[arg-type]  # Inspect's list type is invariant over a wider union
        headline_metric=headline_metric(metrics, headline),
        viewer=viewer_config(),
        model=setup.default_model,
        version=task_version(name),
        metadata={"notes": setup.notes, "latents": setup.latents, **metadata},
    )
