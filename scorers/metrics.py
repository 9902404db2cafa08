"""ESR metrics: thin Inspect `@metric`s over `esr_eval.results.stats` (the one implementation of
rates and intervals, which the report and the gate use too).

The scorer's metrics are groups (`stats.METRIC_GROUPS`): each returns a dict of figures, which
Inspect logs as one entry per figure (`esr_rate`, `esr_rate_ci_low`, `esr_rate_ci_high`, ...) and
the viewer shows side by side under the group's name, so a rate's 95% bounds (clustered by latent)
and the count it rests on sit beside it. The `clean` group (figures without degraded trials) is
logged only when some trial is degraded; otherwise it would repeat the others. Judge errors are
counted by `judge_errors` and left out of every rate and mean. Each figure is also a one-float
metric of its own (`METRICS`), for Inspect's `grouped(metric, "level")`. Empty input gives NaN
(counts give 0).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from inspect_ai.scorer import Metric, SampleScore, grouped, metric

from esr_eval.results.stats import (
    ADVERSARIAL_METRIC_GROUPS,
    ADVERSARIAL_METRIC_NAMES,
    ESR_METRIC_NAMES,
    METRIC_GROUPS,
    OMITTED_UNLESS_DEGRADED,
    PairedTrial,
    Summary,
    metric_description,
    paired_figures,
)
from esr_eval.schema import SampleMetadata, Trial, TrialValue


def trials(scores: list[SampleScore]) -> list[Trial]:
    out = []
    for s in scores:
        if TrialValue.is_value(s.score.value):
            latent = SampleMetadata.from_metadata(s.sample_metadata).latent
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


def _register_group(group: str, names: list[str]) -> Callable[[], Metric]:
    """A no-argument @metric named `group` that returns its figures as a dict (Inspect logs each
    figure under its own name; the viewer heads them with `group`)."""
    only_if_degraded = group in OMITTED_UNLESS_DEGRADED

    def factory() -> Metric:
        def compute(scores: list[SampleScore]) -> dict[str, float]:
            summary = Summary(trials(scores))
            if only_if_degraded and summary.count("n_clean") == summary.count("n_judged"):
                return {}  # no degraded trial: these figures equal the others
            return summary.metrics(names)

        return compute

    factory.__name__ = factory.__qualname__ = group
    factory.__doc__ = "; ".join(f"{name}: {metric_description(name)}" for name in names)
    return metric(name=group)(factory)


GROUP_METRICS: dict[str, Callable[[], Metric]] = {
    group: _register_group(group, names) for group, names in {**METRIC_GROUPS, **ADVERSARIAL_METRIC_GROUPS}.items()
}


def _checked(names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown ESR metric {', '.join(map(repr, unknown))}: choose from {list(METRICS)}")
    return names


def esr_metrics() -> list[Metric]:
    """The attempts-judge scorer's default metrics: its groups, in display order."""
    return [GROUP_METRICS[group]() for group in METRIC_GROUPS]


def adversarial_metrics() -> list[Metric]:
    """ESR metrics plus the rates of attempts that serve the (hijack) concept."""
    return esr_metrics() + [GROUP_METRICS[group]() for group in ADVERSARIAL_METRIC_GROUPS]


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


def paired_metrics(conditions: list[str], comparisons: list[tuple[str, str]]) -> Metric:
    """The continuation controls' figures (`stats.paired_figures`): per condition the restart
    rate in the continuation and the continuation's score, per comparison the paired difference,
    each with its 95% interval clustered by latent."""

    @metric(name="paired")
    def paired() -> Metric:
        def compute(scores: list[SampleScore]) -> dict[str, float]:
            trials = [t for s in scores if (t := PairedTrial.of(s.score.value, SampleMetadata.from_metadata(s.sample_metadata), s.sample_id))]
            return paired_figures(trials, conditions, comparisons)

        return compute

    return paired()
