"""Probabilistic bisection (Waeber, Frazier & Henderson 2011) of the boost toward a target
first-attempt score.

The judge's first-attempt score falls as the boost grows. Each trial generates at the posterior
median x and scores it (s in [0, 1]; None when the judge could not grade it: the trial is
spent without an update); a Beta(0.5 + w*s, 0.5 + w*(1-s)) belief gives
q = P(true score at x > target) = P(threshold > x), and the posterior is multiplied by q above x
and by 1 - q below. A trial within `tolerance` of the target ends the search early.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import beta, norm

from esr_eval.config import SEARCH_MAX_TRIALS

BELIEF_WEIGHT = 5.0
GRID_POINTS = 512
TOLERANCE = 0.1

ScoreFn = Callable[[float, int], Awaitable[float | None]]  # (boost, trial) -> first-attempt score in [0, 1] or None


@dataclass
class CalibrationResult:
    threshold: float
    trials: int
    score: float | None  # the score of the trial nearest the target, in [0, 1]; None: no trial was judged
    history: list[tuple[float, float]] = field(default_factory=list)  # (boost, score) of judged trials
    cached: bool = False
    judge_errors: int = 0  # trials the judge could not grade (no update of the belief)

    @property
    def measured(self) -> bool:
        """At least one trial was judged (else the threshold is the prior's median)."""
        return bool(self.history)


@dataclass(frozen=True)
class Bounds:
    lower: float
    upper: float
    prior_mean: float
    prior_sd: float

    @classmethod
    def from_scale(cls, scale: float) -> "Bounds":
        """Bounds from the residual's typical norm at the hook layer, in latent units. On the
        embedded model answers derail at pushes of about 0.3-0.4 of that norm."""
        return cls(0.0, 2.0 * scale, 0.4 * scale, 0.25 * scale)


def direction_confidence(score: float, target: float, weight: float = BELIEF_WEIGHT) -> float:
    """P(true score > target) under a Beta(0.5 + w*s, 0.5 + w*(1-s)) belief about the score."""
    s = float(np.clip(score, 0.0, 1.0))
    return float(beta.sf(target, 0.5 + weight * s, 0.5 + weight * (1.0 - s)))


async def bisect_boost(
    score_fn: ScoreFn,
    bounds: Bounds,
    target: float = 0.3,
    max_trials: int = SEARCH_MAX_TRIALS,
    tolerance: float = TOLERANCE,
) -> CalibrationResult:
    grid = np.linspace(bounds.lower, bounds.upper, GRID_POINTS)
    posterior = norm.pdf(grid, bounds.prior_mean, bounds.prior_sd) + 1e-12
    posterior /= posterior.sum()
    history: list[tuple[float, float]] = []
    judge_errors = 0
    for trial in range(max_trials):
        x = float(grid[np.searchsorted(np.cumsum(posterior), 0.5)])
        scored = await score_fn(x, trial)
        if scored is None:
            judge_errors += 1
            continue
        s = float(scored)
        history.append((x, s))
        if abs(s - target) <= tolerance + 1e-9:
            return CalibrationResult(x, trial + 1, s, history, judge_errors=judge_errors)
        q = direction_confidence(s, target)
        posterior = posterior * np.where(grid > x, q, 1.0 - q)
        posterior /= posterior.sum()
    s_best = min(history, key=lambda h: abs(h[1] - target))[1] if history else None
    median = float(grid[np.searchsorted(np.cumsum(posterior), 0.5)])
    # the posterior median is the estimate; the score reported is the nearest one observed
    return CalibrationResult(median, max_trials, s_best, history, judge_errors=judge_errors)
