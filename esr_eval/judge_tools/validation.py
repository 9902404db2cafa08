"""How well a grader agrees with the labelled judge-validation set: the figures, their 95%
intervals and the confusion plot. Pure functions over `Comparison`s (one per labelled row);
the `esr_eval/judge_validation` task and `esr-eval validate-judge` share them.

Rules: a judge error counts as a wrong attempt count and as "not multi-attempt"; it is its own
class in the count kappa. Rows are the unit (answers of one latent are not clustered: the set
is small and most of its multi-attempt rows are written, one per concept and prompt).
Intervals: exact (Clopper-Pearson) for shares, bootstrap percentile (scipy, 2,000 resamples of
rows, fixed seed) for F1, kappa and Spearman's rho.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

MISSING = -1.0  # Score.value holds floats only: -1 marks "no value" (no attempt, no reply)
MAX_COUNT_CLASS = 3  # attempt counts 3 and above share one class
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0


@dataclass(frozen=True)
class Comparison:
    """One labelled row against the grader's reply (all floats, as stored in `Score.value`)."""

    labelled_attempts: float
    judged_attempts: float = MISSING  # MISSING: judge error
    labelled_improves: float = MISSING  # 1 / 0 on multi-attempt rows
    judged_improves: float = MISSING  # last > first, when the judge found 2+ attempts
    first_band: float = MISSING  # 0..4 label of the first attempt
    judged_first: float = MISSING  # the judge's first-attempt score, 0..100
    judge_error: float = 0.0
    judge_fault: float = 0.0

    def to_value(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def is_value(cls, value: Any) -> TypeGuard[dict[str, Any]]:
        return isinstance(value, dict) and "labelled_attempts" in value and "judged_attempts" in value

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> "Comparison":
        return cls(**{f.name: float(value.get(f.name, MISSING)) for f in fields(cls)})


def compare(
    labelled_attempts: int,
    labelled_improves: bool | None,
    first_band: int | None,
    judged_scores: list[float] | None,
    fault: bool = False,
) -> Comparison:
    """`judged_scores`: the grader's attempt scores in order, None for a judge error."""
    error = judged_scores is None
    scores = judged_scores or []
    return Comparison(
        labelled_attempts=float(labelled_attempts),
        judged_attempts=MISSING if error else float(len(scores)),
        labelled_improves=MISSING if labelled_improves is None else float(labelled_improves),
        judged_improves=float(scores[-1] > scores[0]) if len(scores) >= 2 else MISSING,
        first_band=MISSING if first_band is None else float(first_band),
        judged_first=float(scores[0]) if scores else MISSING,
        judge_error=float(error),
        judge_fault=float(fault and not error),
    )


# ------------------------------------------------------------------ statistics (vectorised for the bootstrap)


def _f1(y: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    tp = np.sum(y & p, axis=axis)
    wrong = np.sum(y ^ p, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(2 * tp + wrong > 0, 2 * tp / (2 * tp + wrong), np.nan)


def _kappa(y: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Cohen's kappa of two ratings over small integer classes (NaN when chance agreement is total)."""
    classes = np.union1d(np.unique(y), np.unique(p))
    observed = np.mean(y == p, axis=axis)
    expected = sum(np.mean(y == c, axis=axis) * np.mean(p == c, axis=axis) for c in classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(expected < 1, (observed - expected) / (1 - expected), np.nan)


def _spearman(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=axis), rankdata(y, axis=axis)
    rx = rx - rx.mean(axis=axis, keepdims=True)
    ry = ry - ry.mean(axis=axis, keepdims=True)
    denom = np.sqrt(np.sum(rx * rx, axis=axis) * np.sum(ry * ry, axis=axis))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, np.sum(rx * ry, axis=axis) / denom, np.nan)


@dataclass(frozen=True)
class Figure:
    value: float
    low: float
    high: float
    n: int  # rows behind it


def _nan_figure(n: int = 0) -> Figure:
    return Figure(math.nan, math.nan, math.nan, n)


def share(successes: int, n: int) -> Figure:
    """A share with its exact (Clopper-Pearson) 95% interval."""
    if n == 0:
        return _nan_figure()
    from scipy.stats import binomtest

    ci = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="exact")
    return Figure(successes / n, float(ci.low), float(ci.high), n)


def bootstrapped(statistic, *samples: np.ndarray) -> Figure:
    """A paired statistic of row samples with a percentile bootstrap 95% interval."""
    n = len(samples[0])
    if n == 0:
        return _nan_figure()
    value = float(statistic(*samples))
    if math.isnan(value) or n < 2:
        return Figure(value, math.nan, math.nan, n)
    import warnings

    from scipy.stats import bootstrap

    with warnings.catch_warnings():  # scipy warns about degenerate resamples, which nanpercentile skips
        warnings.simplefilter("ignore")
        result = bootstrap(
            samples, statistic, paired=True, vectorized=True, n_resamples=BOOTSTRAP_RESAMPLES,
            method="percentile", random_state=np.random.default_rng(BOOTSTRAP_SEED),
        )  # fmt: skip
    draws = np.asarray(result.bootstrap_distribution, dtype=float)
    if np.all(np.isnan(draws)):
        return Figure(value, math.nan, math.nan, n)
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return Figure(value, float(low), float(high), n)


def count_class(n: float) -> int:
    return -1 if n < 0 else int(min(n, MAX_COUNT_CLASS))


# name -> description (display order); each has _ci_low / _ci_high entries
FIGURES: dict[str, str] = {
    "count_accuracy": "Share of rows whose attempt count the grader got exactly right.",
    "multi_precision": "Of the rows the grader split into 2+ attempts, the share labelled multi-attempt.",
    "multi_recall": "Of the rows labelled multi-attempt, the share the grader split into 2+ attempts.",
    "multi_f1": "Harmonic mean of multi_precision and multi_recall.",
    "multi_kappa": "Cohen's kappa of labelled vs judged multi-attempt (2+ attempts).",
    "count_kappa": "Cohen's kappa of labelled vs judged attempt counts (0, 1, 2, 3+, error).",
    "improvement_sign_agreement": "Among rows both labelled and judged multi-attempt, share where last > first matches the label.",
    "first_score_spearman": "Spearman's rho of the judged first-attempt score and the labelled band (rows with an attempt).",
}
COUNTS: dict[str, str] = {
    "n": "Rows scored.",
    "judge_errors": "Rows whose grader reply stayed unreadable (counted as wrong).",
    "judge_faults": "Rows whose readable reply contradicts the answer (see esr_eval.judge.faults).",
    "n_multi_labelled": "Rows labelled multi-attempt.",
    "n_multi_judged": "Rows the grader split into 2+ attempts.",
}
INTERVAL_SUFFIXES = ("_ci_low", "_ci_high")
METRIC_NAMES: list[str] = [*COUNTS, *(f"{name}{s}" for name in FIGURES for s in ("", *INTERVAL_SUFFIXES))]


def metric_description(name: str) -> str:
    base = name.removesuffix("_ci_low").removesuffix("_ci_high")
    if base != name:
        return f"95% {'lower' if name.endswith('_low') else 'upper'} bound of {base}."
    return FIGURES.get(name) or COUNTS[name]


@functools.lru_cache(maxsize=64)
def _figures(comparisons: tuple[Comparison, ...]) -> dict[str, Figure]:
    rows = comparisons
    labelled = np.array([c.labelled_attempts for c in rows])
    judged = np.array([c.judged_attempts for c in rows])
    y_multi, p_multi = labelled >= 2, judged >= 2
    both_multi = [c for c in rows if c.labelled_attempts >= 2 and c.judged_attempts >= 2]
    ranked = [c for c in rows if c.first_band >= 0 and c.judged_first >= 0]
    tp = int(np.sum(y_multi & p_multi))
    figures = {
        "count_accuracy": share(int(np.sum(labelled == judged)), len(rows)),
        "multi_precision": share(tp, int(np.sum(p_multi))),
        "multi_recall": share(tp, int(np.sum(y_multi))),
        "multi_f1": bootstrapped(_f1, y_multi, p_multi),
        "multi_kappa": bootstrapped(_kappa, y_multi.astype(int), p_multi.astype(int)),
        "count_kappa": bootstrapped(
            _kappa, np.array([count_class(x) for x in labelled]), np.array([count_class(x) for x in judged])
        ),
        "improvement_sign_agreement": share(
            sum(c.judged_improves == c.labelled_improves for c in both_multi), len(both_multi)
        ),
        "first_score_spearman": bootstrapped(
            _spearman, np.array([c.first_band for c in ranked]), np.array([c.judged_first for c in ranked])
        ),
    }
    return figures


def figures(comparisons: Sequence[Comparison]) -> dict[str, Figure]:
    """Every figure of FIGURES over the rows (NaN where it has no rows)."""
    if not comparisons:
        return {name: _nan_figure() for name in FIGURES}
    return _figures(tuple(comparisons))


def metric_value(comparisons: Sequence[Comparison], name: str) -> float:
    """One entry of METRIC_NAMES: a count, a figure or one of its bounds."""
    rows = list(comparisons)
    counts = {
        "n": len(rows),
        "judge_errors": sum(c.judge_error > 0 for c in rows),
        "judge_faults": sum(c.judge_fault > 0 for c in rows),
        "n_multi_labelled": sum(c.labelled_attempts >= 2 for c in rows),
        "n_multi_judged": sum(c.judged_attempts >= 2 for c in rows),
    }
    if name in counts:
        return float(counts[name])
    base = name.removesuffix("_ci_low").removesuffix("_ci_high")
    figure = figures(rows)[base]
    return figure.low if name.endswith("_ci_low") else figure.high if name.endswith("_ci_high") else figure.value


# ------------------------------------------------------------------ the confusion plot


def confusion(comparisons: Sequence[Comparison]) -> tuple[list[str], list[str], np.ndarray]:
    """(labelled classes, judged classes, counts[labelled, judged]) over 0, 1, 2, 3+ (and error)."""
    names = {-1: "error", 0: "0", 1: "1", 2: "2", 3: f"{MAX_COUNT_CLASS}+"}
    rows_classes = list(range(MAX_COUNT_CLASS + 1))
    cols_classes = rows_classes + ([-1] if any(c.judged_attempts < 0 for c in comparisons) else [])
    counts = np.zeros((len(rows_classes), len(cols_classes)), dtype=int)
    for c in comparisons:
        counts[rows_classes.index(count_class(c.labelled_attempts)), cols_classes.index(count_class(c.judged_attempts))] += 1
    return [names[k] for k in rows_classes], [names[k] for k in cols_classes], counts


def confusion_plot(comparisons: Sequence[Comparison], path: str | Path, title: str) -> Path:
    """PNG of labelled (rows) vs judged (columns) attempt counts, each cell annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from esr_eval.files import write_png

    row_names, col_names, counts = confusion(comparisons)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(col_names), 1.2 + 0.9 * len(row_names)))
    ax.imshow(counts, cmap="Blues")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            dark = counts[i, j] > counts.max() / 2
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color="white" if dark else "black")
    ax.set_xticks(range(len(col_names)), col_names)
    ax.set_yticks(range(len(row_names)), row_names)
    ax.set_xlabel("judged attempts")
    ax.set_ylabel("labelled attempts")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = write_png(fig, path)
    plt.close(fig)
    return out
