"""Boost calibration in a few rounds of parallel probes (a grid-Bayesian psychometric fit, as in
adaptive psychophysics: QUEST+, Watson 2017).

The first-attempt score s(x) falls with the boost x from a plateau `top` to 0. The model is a
logistic through the target at the threshold t: s(x) = top / (1 + (top/target - 1) * exp((x - t) / w)),
with judge noise N(0, sigma). A grid posterior over (t, w, top, sigma) starts from the prior on t
(`Bounds`) and flat priors on the rest; each round scores several boosts at once, at evenly spaced
quantiles of the posterior of t, so the rows of every latent under calibration fill one batch,
and all the scores of a round update the posterior together. The estimate is the posterior
median of t. Unlike bisection, every score counts by its size, not only by its side of the target.
"""

from __future__ import annotations

import asyncio

import numpy as np
from scipy.stats import norm

from esr_eval.calibration.bisection import Bounds, CalibrationResult, ScoreFn
from esr_eval.config import SEARCH_MAX_TRIALS

METHOD = "rounds@1"  # in the threshold cache key: bump when a change can move a threshold
ROUNDS = 2
MAX_ROUNDS = 4
GRID_POINTS = 256
WIDTHS = np.geomspace(0.03, 0.6, 8)  # curve widths, as shares of the bounds' half range
NOISE_SD = (0.1, 0.2, 0.3)  # judge noise on a single first-attempt score


def probes_per_round(max_trials: int, rounds: int) -> list[int]:
    """`max_trials` answers spread over `rounds` rounds, the larger rounds first: 10, 3 -> [4, 3, 3]."""
    rounds = max(1, min(rounds, max_trials))
    base, extra = divmod(max_trials, rounds)
    return [base + (1 if r < extra else 0) for r in range(rounds)]


class ThresholdPosterior:
    """Grid posterior over (threshold, width, plateau, noise) of a falling score curve."""

    def __init__(self, bounds: Bounds, target: float) -> None:
        self.target = target
        self.t = np.linspace(bounds.lower, bounds.upper, GRID_POINTS)
        half_range = (bounds.upper - bounds.lower) / 2
        self.w = WIDTHS * half_range
        self.top = np.linspace(min(target + 0.1, 0.95), 1.0, 5)
        self.sigma = np.array(NOISE_SD)
        prior_t = norm.pdf(self.t, bounds.prior_mean, bounds.prior_sd) + 1e-12
        # log posterior, axes (t, w, top, sigma)
        self.log_p = np.broadcast_to(np.log(prior_t)[:, None, None, None], (len(self.t), len(self.w), len(self.top), len(self.sigma))).copy()

    def curve(self, x: float) -> np.ndarray:
        """s(x) for every (t, w, top) on the grid."""
        t, w, top = self.t[:, None, None], self.w[None, :, None], self.top[None, None, :]
        z = np.clip((x - t) / w, -50, 50)
        return top / (1.0 + (top / self.target - 1.0) * np.exp(z))

    def update(self, x: float, score: float) -> None:
        s = float(np.clip(score, 0.0, 1.0))
        residual = (s - self.curve(x))[..., None]
        self.log_p += norm.logpdf(residual, 0.0, self.sigma)
        self.log_p -= self.log_p.max()

    def marginal_t(self) -> np.ndarray:
        p = np.exp(self.log_p).sum(axis=(1, 2, 3))
        return p / p.sum()

    def quantiles(self, qs: list[float] | np.ndarray) -> list[float]:
        cdf = np.cumsum(self.marginal_t())
        return [float(self.t[min(np.searchsorted(cdf, q), len(self.t) - 1)]) for q in qs]

    def median(self) -> float:
        return self.quantiles([0.5])[0]


async def calibrate_in_rounds(
    score_fn: ScoreFn,
    bounds: Bounds,
    target: float = 0.3,
    max_trials: int = SEARCH_MAX_TRIALS,
    rounds: int = ROUNDS,
) -> CalibrationResult:
    """At most `rounds` (<= 4) sequential rounds, `max_trials` scored answers in all; the answers
    of one round run concurrently."""
    if not 1 <= rounds <= MAX_ROUNDS:
        raise ValueError(f"calibration rounds {rounds} must be 1..{MAX_ROUNDS}")
    posterior = ThresholdPosterior(bounds, target)
    history: list[tuple[float, float]] = []
    judge_errors = trial = 0
    for k in probes_per_round(max_trials, rounds):
        boosts = posterior.quantiles(np.arange(1, k + 1) / (k + 1))
        scores = await asyncio.gather(*(score_fn(x, trial + i) for i, x in enumerate(boosts)))
        trial += k
        for x, s in zip(boosts, scores):
            if s is None:  # the judge could not grade it: spent, no update
                judge_errors += 1
                continue
            posterior.update(x, float(s))
            history.append((x, float(s)))
    nearest = min(history, key=lambda h: abs(h[1] - target))[1] if history else None
    return CalibrationResult(posterior.median(), trial, nearest, history, judge_errors=judge_errors)
