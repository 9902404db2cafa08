"""Per-token detector activity along episodes: regions around the correction, their statistics,
and the aligned curve (mean and SEM over episodes)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from esr_eval.steering.intervention import Intervention

REGIONS = ("off_topic", "correction", "on_topic")


@dataclass
class Episode:
    sample_id: Any
    epoch: int
    messages: list[dict[str, str]]
    answer: str
    attempts: list[Any]
    steering: list[Intervention]
    boundary: int | None = None  # token where attempt 2 starts
    first_start: int = 0
    last_start: int | None = None
    activity: list[float] | None = None  # summed detector activation per answer token


def region_slices(ep: Episode, n_tokens: int, half_width: int) -> dict[str, slice]:
    b = ep.boundary
    assert b is not None, "a located episode has its boundary"
    return {
        "off_topic": slice(ep.first_start, max(ep.first_start, b - half_width)),
        "correction": slice(max(0, b - half_width), min(n_tokens, b + half_width)),
        "on_topic": slice(max(ep.last_start or b, b + half_width), n_tokens),
    }


def cohens_d(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or len(y) < 2:
        return math.nan
    pooled = math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2)
    return float((x.mean() - y.mean()) / pooled) if pooled > 0 else math.nan


def wilcoxon_greater(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from scipy import stats

    if len(x) == 0 or np.all(x == y):
        return {"statistic": math.nan, "p_value": math.nan}
    try:
        res = stats.wilcoxon(x, y, alternative="greater")
    except ValueError:  # too few non-zero differences
        return {"statistic": math.nan, "p_value": math.nan}
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue)}


def mann_whitney_greater(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """One-sided Mann-Whitney U test of x > y (independent samples)."""
    from scipy import stats

    if len(x) == 0 or len(y) == 0:
        return {"statistic": math.nan, "p_value": math.nan}
    res = stats.mannwhitneyu(x, y, alternative="greater")
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue)}


def no_restart_baseline(stats: dict[str, Any], answers: list[Episode]) -> dict[str, Any]:
    """Detector activity in steered answers that went off topic and never restarted, beside the
    episodes' regions: per answer, the mean over its first `span` tokens, `span` being the median
    length of the episodes' off-topic regions (so both cover the same stretch of an answer). If
    the episodes' off-topic region is not above this baseline, the detectors respond to off-topic
    text, not to a coming restart."""
    spans = [r["boundary_token"] - stats["correction_half_width"] for r in stats["episodes"]]
    span = int(np.median(spans)) if spans else 0
    rows = []
    for ep in answers:
        act = np.asarray(ep.activity, dtype=float)
        cut = act[ep.first_start : ep.first_start + span] if span > 0 else act[ep.first_start :]
        rows.append({
            "sample_id": ep.sample_id,
            "epoch": ep.epoch,
            "n_tokens": len(act),
            "span_mean": float(cut.mean()) if len(cut) else math.nan,
            "answer_mean": float(act.mean()) if len(act) else math.nan,
        })  # fmt: skip
    base = np.array([r["span_mean"] for r in rows if not math.isnan(r["span_mean"])])
    whole = np.array([r["answer_mean"] for r in rows if not math.isnan(r["answer_mean"])])
    tests = {}
    for region in ("off_topic", "correction"):
        ep_means = np.array([r[f"{region}_mean"] for r in stats["episodes"] if r[f"{region}_mean"] is not None and not math.isnan(r[f"{region}_mean"])])
        tests[f"{region}_vs_no_restart"] = {
            **mann_whitney_greater(ep_means, base),
            "cohens_d": cohens_d(ep_means, base),
            "alternative": f"{region} (episodes) > no-restart answers",
        }
    return {
        "n": len(base),
        "span_tokens": span,
        "mean": float(base.mean()) if len(base) else math.nan,
        "sem": float(base.std(ddof=1) / math.sqrt(len(base))) if len(base) > 1 else math.nan,
        "answer_mean": float(whole.mean()) if len(whole) else math.nan,
        "tests": tests,
        "answers": rows,
    }


def statistics(episodes: list[Episode], window: int, half_width: int) -> dict[str, Any]:
    """Aligned curve (mean, SEM, count per offset) and per-region comparisons."""
    offsets = np.arange(-window, window + 1)
    grid = np.full((len(episodes), len(offsets)), np.nan)
    region_means: dict[str, list[float]] = {r: [] for r in REGIONS}
    rows = []
    for i, ep in enumerate(episodes):
        act = np.asarray(ep.activity, dtype=float)
        assert ep.boundary is not None, "a located episode has its boundary"
        pos = ep.boundary + offsets
        ok = (pos >= 0) & (pos < len(act))
        grid[i, ok] = act[pos[ok]]
        means = {
            r: float(act[sl].mean()) if sl.stop > sl.start else math.nan
            for r, sl in region_slices(ep, len(act), half_width).items()
        }
        if not any(math.isnan(v) for v in means.values()):
            for r in REGIONS:
                region_means[r].append(means[r])
        rows.append(
            {
                "sample_id": ep.sample_id,
                "epoch": ep.epoch,
                "boundary_token": ep.boundary,
                "n_tokens": len(act),
                **{f"{r}_mean": means[r] for r in REGIONS},
            }
        )
    count = (~np.isnan(grid)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, np.nansum(grid, 0) / np.maximum(count, 1), np.nan)
        sd = np.array([np.nanstd(grid[:, j], ddof=1) if count[j] > 1 else np.nan for j in range(len(offsets))])
        sem = sd / np.sqrt(np.maximum(count, 1))
    arr = {r: np.asarray(v) for r, v in region_means.items()}
    on_mean = float(arr["on_topic"].mean()) if len(arr["on_topic"]) else math.nan
    regions = {
        r: {
            "mean": float(a.mean()) if len(a) else math.nan,
            "sem": float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan,
            "ratio_to_on_topic": float(a.mean() / on_mean) if len(a) and on_mean else math.nan,
        }
        for r, a in arr.items()
    }
    tests = {
        f"{a}_vs_on_topic": {
            **wilcoxon_greater(arr[a], arr["on_topic"]),
            "cohens_d": cohens_d(arr[a], arr["on_topic"]),
            "alternative": f"{a} > on_topic",
        }
        for a in ("off_topic", "correction")
    }
    return {
        "n_with_all_regions": len(arr["on_topic"]),
        "window": window,
        "correction_half_width": half_width,
        "curve": {"offset": offsets.tolist(), "mean": mean.tolist(), "sem": sem.tolist(), "count": count.tolist()},
        "regions": regions,
        "tests": tests,
        "episodes": rows,
    }


def plot(stats: dict[str, Any], title: str, path: Path) -> Path:
    from matplotlib.figure import Figure

    from esr_eval.files import write_png

    c = stats["curve"]
    x, m, s = np.array(c["offset"]), np.array(c["mean"], dtype=float), np.array(c["sem"], dtype=float)
    fig = Figure(figsize=(6, 3.6))
    ax = fig.subplots()
    ax.plot(x, m, color="C0", label="mean over episodes")
    ax.fill_between(x, m - np.nan_to_num(s), m + np.nan_to_num(s), color="C0", alpha=0.25, label="SEM")
    ax.axvline(0, color="grey", linestyle="--", label="correction starts")
    w = stats["correction_half_width"]
    ax.axvspan(-w, w, color="orange", alpha=0.12, label="correction window")
    baseline = stats.get("no_restart") or {}
    if baseline.get("n"):
        ax.axhline(baseline["mean"], color="C3", linestyle=":", label=f"off-topic answers without a restart (n={baseline['n']})")
    ax.set_xlabel("tokens from the start of attempt 2")
    ax.set_ylabel("summed detector activation")
    ax.set_title(title)
    ax.legend(fontsize=7)
    return write_png(fig, path)
