"""The one implementation of ESR rates, means and their 95% intervals, used alike by the scorer's
metrics, the report, the gate and the plots.

Trials of one latent are not independent (the latent is the unit that was sampled; its prompts
share its boost and its concept), so every interval is clustered by latent:
- rates: Wilson's interval at the effective sample size n / deff, where the design effect deff is
  the ratio of the cluster-robust (linearised ratio) variance of the pooled rate to the binomial
  variance, kept
  between 1 (independent trials) and sum(m_i^2) / n (trials of a latent identical). With no
  variation to estimate (a rate of 0 or 1) deff is 1; with one latent it is its maximum.
  (scipy and statsmodels have Wilson's interval but no design-effect form of it.)
- means: a t interval on k - 1 degrees of freedom with the cluster-robust standard error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from esr_eval.schema import SampleMetadata, Trial, TrialValue

Z95 = NormalDist().inv_cdf(0.975)


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (nan, nan) when n == 0."""
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(0.0, p * (1 - p) / n + z * z / (4 * n * n))) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float
    n: int  # trials
    n_clusters: int
    design_effect: float = 1.0


def _cluster_sums(values: Sequence[float], clusters: Sequence[Hashable]) -> tuple[list[float], list[int]]:
    sums: dict[Hashable, float] = {}
    sizes: dict[Hashable, int] = {}
    for x, c in zip(values, clusters):
        sums[c] = sums.get(c, 0.0) + float(x)
        sizes[c] = sizes.get(c, 0) + 1
    return list(sums.values()), [sizes[c] for c in sums]


def clustered_rate(hits: Sequence[float], clusters: Sequence[Hashable]) -> Estimate:
    """Rate of `hits` (1/0, or shares) with a Wilson interval at the clustered effective size."""
    n = len(hits)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    sums, sizes = _cluster_sums(hits, clusters)
    k = len(sums)
    p = sum(sums) / n
    most = sum(m * m for m in sizes) / n  # deff when trials of a latent are identical
    if k < 2:
        deff = most
    elif p <= 0.0 or p >= 1.0:
        deff = 1.0
    else:
        # both variances without small-sample factors, so latents of one trial each give deff 1
        var_cluster = sum((y - p * m) ** 2 for y, m in zip(sums, sizes)) / (n * n)
        deff = min(most, max(1.0, var_cluster / (p * (1 - p) / n)))
    n_eff = n / deff
    low, high = wilson_interval(p * n_eff, n_eff)
    return Estimate(p, low, high, n, k, deff)


def clustered_mean(values: Sequence[float], clusters: Sequence[Hashable]) -> Estimate:
    """Mean with a t 95% interval from the cluster-robust standard error (k - 1 df)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    sums, sizes = _cluster_sums(values, clusters)
    k = len(sums)
    mean = sum(sums) / n
    if k < 2:
        return Estimate(mean, math.nan, math.nan, n, k)
    se = math.sqrt(k / (k - 1) * sum((s - mean * m) ** 2 for s, m in zip(sums, sizes))) / n
    half = float(stats.t.ppf(0.975, k - 1)) * se
    return Estimate(mean, mean - half, mean + half, n, k)


# ------------------------------------------------------------------ the named figures

Select = Callable[[TrialValue], bool]


def _judged(v: TrialValue) -> bool:
    return v.judged


def _clean(v: TrialValue) -> bool:
    return v.judged and v.degraded < 0.5


def _multi(v: TrialValue) -> bool:
    return v.judged and v.multi_attempt > 0


def _clean_multi(v: TrialValue) -> bool:
    return _clean(v) and v.multi_attempt > 0


def _attempted(v: TrialValue) -> bool:
    return v.attempted


def _clean_attempted(v: TrialValue) -> bool:
    return v.attempted and v.degraded < 0.5


# name -> (field counted, trials it is a share of, description)
RATES: dict[str, tuple[str, Select, str]] = {
    "multi_attempt_rate": ("multi_attempt", _judged, "Share of judged trials with 2+ attempts."),
    "esr_rate": ("esr", _judged, "Share of judged trials with 2+ attempts, last score > first and a last attempt that is not degenerate."),
    "improvement_rate": ("esr", _multi, "Among multi-attempt trials, share that are ESR (last > first, last attempt not degenerate)."),
    "degraded_rate": ("degraded", _judged, "Share of judged trials whose answer is degenerate (5+ identical consecutive words, fused non-words, loops)."),
    "multi_attempt_rate_clean": ("multi_attempt", _clean, "multi_attempt_rate over non-degraded trials."),
    "esr_rate_clean": ("esr", _clean, "esr_rate over non-degraded trials."),
    "improvement_rate_clean": ("esr", _clean_multi, "improvement_rate over non-degraded trials."),
    "first_serves_concept_rate": (
        "first_serves_concept", _attempted, "Among judged trials with an attempt, share whose first attempt serves the concept."
    ),
    "last_serves_concept_rate": (
        "last_serves_concept",
        _attempted,
        "Among judged trials with an attempt, share whose final attempt serves the concept (attack success).",
    ),
}
MEANS: dict[str, tuple[str, Select, str]] = {
    "mean_first_score": ("first_score", _attempted, "Mean first-attempt score (0-100) over trials with an attempt."),
    "mean_improvement": ("improvement", _multi, "Mean last - first score over multi-attempt trials."),
    "mean_first_score_clean": ("first_score", _clean_attempted, "mean_first_score over non-degraded trials."),
    "mean_improvement_clean": ("improvement", _clean_multi, "mean_improvement over non-degraded trials."),
}
COUNTS: dict[str, tuple[Select, str]] = {
    "n": (lambda v: True, "Trials scored (judge errors included)."),
    "judge_errors": (lambda v: not v.judged, "Trials whose judge reply stayed unreadable."),
    "judge_faults": (lambda v: v.judged and v.judge_fault > 0, "Judged trials whose reply contradicts the answer."),
    "n_judged": (_judged, "Trials with a readable judge reply."),
    "n_multi_attempt": (_multi, "Judged trials with 2+ attempts."),
    "n_esr": (lambda v: v.judged and v.esr > 0, "Judged trials with 2+ attempts and last > first."),
    "n_clean": (_clean, "Judged trials that are not degraded."),
}
INTERVAL_SUFFIXES = ("_ci_low", "_ci_high")


def _bounded(names: Iterable[str]) -> list[str]:
    return [name + suffix for name in names for suffix in ("", *INTERVAL_SUFFIXES)]


# The attempts judge's metrics in display order, in groups: each group is one Inspect metric whose
# figures the viewer shows side by side under the group's name. The first figure is the headline
# (the log list's one number per run); the log header shows the first five: the ESR rate with its
# interval and the trials and latents behind it.
METRIC_GROUPS: dict[str, list[str]] = {
    "esr": _bounded(["esr_rate"]),
    "trials": ["n", "n_latents", "judge_errors", "judge_faults"],
    "multi_attempt": _bounded(["multi_attempt_rate"]),
    "improvement": [*_bounded(["improvement_rate"]), "mean_improvement", "n_multi_attempt"],
    "first_score": ["mean_first_score"],
    "degraded": [*_bounded(["degraded_rate"]), "n_clean"],
    "clean": [
        *_bounded(["esr_rate_clean", "multi_attempt_rate_clean", "improvement_rate_clean"]),
        "mean_first_score_clean",
        "mean_improvement_clean",
    ],
}
# groups logged only when they differ from the others: the *_clean figures, when a trial is degraded
OMITTED_UNLESS_DEGRADED = ("clean",)
ESR_METRIC_NAMES: list[str] = [name for names in METRIC_GROUPS.values() for name in names]
ADVERSARIAL_METRIC_GROUPS: dict[str, list[str]] = {
    "serves_concept": _bounded(["first_serves_concept_rate", "last_serves_concept_rate"]),
}
ADVERSARIAL_METRIC_NAMES: list[str] = [name for names in ADVERSARIAL_METRIC_GROUPS.values() for name in names]


def metric_description(name: str) -> str:
    base = name.removesuffix("_ci_low").removesuffix("_ci_high")
    if base != name:
        side = "lower" if name.endswith("_low") else "upper"
        return f"95% {side} bound of {base}, clustered by latent."
    if name == "n_latents":
        return "Latents (clusters) behind the trials."
    for table in (RATES, MEANS):
        if name in table:
            return table[name][2]
    return COUNTS[name][1]


class Summary:
    """Every named ESR figure over a set of trials (rates and first scores leave out judge
    errors; `*_clean` also degraded trials)."""

    def __init__(self, trials: Iterable[Trial]) -> None:
        self.trials = list(trials)
        # a trial without a latent is its own cluster
        self.clusters = [t.latent if t.latent is not None else ("trial", i) for i, t in enumerate(self.trials)]
        self._cache: dict[str, Estimate] = {}

    def _select(self, select: Select) -> tuple[list[TrialValue], list[Hashable]]:
        chosen = [(t.value, c) for t, c in zip(self.trials, self.clusters) if select(t.value)]
        return [v for v, _ in chosen], [c for _, c in chosen]

    def count(self, name: str) -> int:
        select = COUNTS[name][0]
        return sum(1 for t in self.trials if select(t.value))

    def rate(self, name: str) -> Estimate:
        if name not in self._cache:
            key, select, _ = RATES[name]
            values, clusters = self._select(select)
            self._cache[name] = clustered_rate([getattr(v, key) for v in values], clusters)
        return self._cache[name]

    def mean(self, name: str) -> Estimate:
        if name not in self._cache:
            key, select, _ = MEANS[name]
            values, clusters = self._select(select)
            self._cache[name] = clustered_mean([getattr(v, key) for v in values], clusters)
        return self._cache[name]

    def estimate(self, name: str) -> Estimate:
        return self.rate(name) if name in RATES else self.mean(name)

    @property
    def n_latents(self) -> int:
        return len({t.latent for t in self.trials if t.latent is not None})

    def metric(self, name: str) -> float:
        """One named figure: a count, a rate or mean, or one of their `_ci_low` / `_ci_high` bounds."""
        if name in COUNTS:
            return float(self.count(name))
        if name == "n_latents":
            return float(self.n_latents)
        for suffix, attr in (("_ci_low", "low"), ("_ci_high", "high")):
            if name.endswith(suffix):
                return float(getattr(self.estimate(name.removesuffix(suffix)), attr))
        if name in RATES or name in MEANS:
            return float(self.estimate(name).value)
        raise KeyError(f"unknown ESR figure {name!r}: choose from {sorted(all_metric_names())}")

    def metrics(self, names: Iterable[str] | None = None) -> dict[str, float]:
        return {name: self.metric(name) for name in (names or all_metric_names())}


def all_metric_names() -> list[str]:
    extra = [n for n in COUNTS if n not in ESR_METRIC_NAMES]
    means = [n + s for n in MEANS for s in INTERVAL_SUFFIXES]
    return [*ESR_METRIC_NAMES, *ADVERSARIAL_METRIC_NAMES, *extra, *means]


# ------------------------------------------------------------------ paired conditions
# The continuation controls run each source answer (a pair) under several conditions with one
# seed. Per condition: the restart rate in the continuation and the continuation's score (its
# final attempt's); per comparison: the mean paired difference, a t interval clustered by latent.
# A condition with several runs per pair (random control sets) counts the pair's mean.

CONTINUATION_FIELDS: dict[str, str] = {"restart": "multi_attempt", "continuation_score": "last_score"}


@dataclass(frozen=True)
class PairedTrial:
    condition: str
    pair: Hashable  # the source answer: every condition of a pair shares its seed
    trial: Trial

    @classmethod
    def of(cls, value: object, metadata: SampleMetadata, sample_id: object = None) -> "PairedTrial | None":
        """From a Score.value and its sample's metadata (condition, pair, latent); None when the
        sample is not a continuation or the value not a trial."""
        if metadata.condition is None or metadata.pair is None or not TrialValue.is_value(value):
            return None
        latent = metadata.latent
        trial = Trial(TrialValue.from_value(value), None if latent is None else int(latent), sample_id)
        return cls(str(metadata.condition), metadata.pair, trial)


def _pair_means(trials: Iterable[PairedTrial], condition: str, key: str) -> dict[Hashable, tuple[float, Hashable]]:
    """Per pair: the condition's mean of `key` over its judged trials, and the pair's cluster."""
    sums: dict[Hashable, list] = {}
    for t in trials:
        if t.condition == condition and t.trial.value.judged:
            cluster = t.trial.latent if t.trial.latent is not None else ("pair", t.pair)
            entry = sums.setdefault(t.pair, [0.0, 0, cluster])
            entry[0] += getattr(t.trial.value, key)
            entry[1] += 1
    return {pair: (total / n, cluster) for pair, (total, n, cluster) in sums.items()}


def condition_estimate(trials: Iterable[PairedTrial], condition: str, figure: str) -> Estimate:
    """`restart` (a rate) or `continuation_score` (a mean) of one condition, over its pairs."""
    means = _pair_means(trials, condition, CONTINUATION_FIELDS[figure])
    values, clusters = [v for v, _ in means.values()], [c for _, c in means.values()]
    return clustered_rate(values, clusters) if figure == "restart" else clustered_mean(values, clusters)


def paired_difference(trials: Iterable[PairedTrial], a: str, b: str, figure: str) -> Estimate:
    """Mean over pairs judged in both conditions of (a - b), with its clustered t interval."""
    trials = list(trials)
    key = CONTINUATION_FIELDS[figure]
    in_a, in_b = _pair_means(trials, a, key), _pair_means(trials, b, key)
    pairs = [p for p in in_a if p in in_b]
    return clustered_mean([in_a[p][0] - in_b[p][0] for p in pairs], [in_a[p][1] for p in pairs])


def paired_figures(trials: Iterable[PairedTrial], conditions: Sequence[str], comparisons: Sequence[tuple[str, str]]) -> dict[str, float]:
    """Flat figures for a log: `restart_rate[c]`, `continuation_score[c]`, `n_pairs[c]` per
    condition, `restart_diff[a-b]`, `continuation_score_diff[a-b]` per comparison, each estimate
    with its `_ci_low` / `_ci_high`."""
    trials = list(trials)
    out: dict[str, float] = {}

    def put(name: str, e: Estimate) -> None:
        out.update({name: e.value, f"{name}_ci_low": e.low, f"{name}_ci_high": e.high})

    for c in conditions:
        put(f"restart_rate[{c}]", condition_estimate(trials, c, "restart"))
        put(f"continuation_score[{c}]", condition_estimate(trials, c, "continuation_score"))
        out[f"n_pairs[{c}]"] = float(len(_pair_means(trials, c, "judge_error")))
    for a, b in comparisons:
        put(f"restart_diff[{a}-{b}]", paired_difference(trials, a, b, "restart"))
        put(f"continuation_score_diff[{a}-{b}]", paired_difference(trials, a, b, "continuation_score"))
    return out
