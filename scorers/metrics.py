"""ESR metrics: thin Inspect `@metric`s over `esr_eval.results.stats` (the one implementation of
rates and intervals, which the report and the gate use too).

Every metric returns one float, so each shows as its own entry in the viewer and works inside
Inspect's `grouped(metric, "level")`. Rates come with 95% bounds clustered by latent as separate
metrics (`esr_rate`, `esr_rate_ci_low`, `esr_rate_ci_high`); `n_latents` says how many latents
stand behind them. Judge errors are counted by `judge_errors` and left out of every rate and mean;
`*_clean` variants also leave out degraded trials. Empty input gives NaN (counts give 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from inspect_ai.scorer import Metric, SampleScore, grouped, metric

from esr_eval.results.stats import (
    ADVERSARIAL_METRIC_NAMES,
    ESR_METRIC_NAMES,
    Summary,
    metric_description,
)
from esr_eval.schema import Trial, TrialValue


def trials(scores: list[SampleScore]) -> list[Trial]:
    out = []
    for s in scores:
        if TrialValue.is_value(s.score.value):
            latent = (s.sample_metadata or {}).get("latent")
            out.append(Trial(TrialValue.from_value(s.score.value), None if latent is None else int(latent), s.sample_id))
    return out


def _register(name: str) -> Callable[[], Metric]:
    """A no-argument @metric registered under `name` (its entry in logs and the viewer)."""

    def factory() -> Metric:
        def compute(scores: list[SampleScore]) -> float:
            return Summary(trials(scores)).metric(name)

        return compute

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = metric_description(name)
    return metric(name=name)(factory)


METRICS: dict[str, Callable[[], Metric]] = {name: _register(name) for name in ESR_METRIC_NAMES + ADVERSARIAL_METRIC_NAMES}


def _checked(names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown ESR metric {', '.join(map(repr, unknown))}: choose from {list(METRICS)}")
    return names


def _build(names: Iterable[str]) -> list[Metric]:
    return [METRICS[name]() for name in _checked(names)]


def esr_metrics() -> list[Metric]:
    """The attempts-judge scorer's default metrics, in display order."""
    return _build(ESR_METRIC_NAMES)


def adversarial_metrics() -> list[Metric]:
    """ESR metrics plus the rates of attempts that serve the (hijack) concept."""
    return _build(ESR_METRIC_NAMES + ADVERSARIAL_METRIC_NAMES)


def grouped_esr_metrics(group_key: str, names: Iterable[str] | None = None, include_all: bool = True) -> list[Metric]:
    """Each metric per value of the sample metadata `group_key` (e.g. "level").

    Entries are named `<metric>[<group>]` (e.g. `esr_rate[0.5]`, and `esr_rate[all]` over every
    sample unless include_all is False), so the metrics of one scorer do not collide in the log.
    """
    return [
        grouped(
            METRICS[name](),
            group_key,
            all="samples" if include_all else False,
            all_label=f"{name}[all]",
            name_template=f"{name}[{{group_name}}]",
        )
        for name in _checked(ESR_METRIC_NAMES if names is None else names)
    ]
