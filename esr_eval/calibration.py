"""How hard to push each latent: probabilistic bisection (Waeber, Frazier & Henderson 2011) of the
boost toward a target first-attempt score, and a jsonl cache of the thresholds found.

The judge's first-attempt score falls as the boost grows. Each trial generates at the posterior
median x and scores it (s in [0, 1]); a Beta(0.5 + w*s, 0.5 + w*(1-s)) belief gives
q = P(true score at x > target) = P(threshold > x), and the posterior is multiplied by q above x
and by 1 - q below. A trial within `tolerance` of the target ends the search early.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import beta, norm

from esr_eval.io import atomic_write_jsonl, read_jsonl
from esr_eval.steering.models import cache_dir

BELIEF_WEIGHT = 5.0
GRID_POINTS = 512

ScoreFn = Callable[[float, int], Awaitable[float]]  # (boost, trial index) -> first-attempt score in [0, 1]


@dataclass
class CalibrationResult:
    threshold: float
    trials: int
    score: float  # the score of the trial nearest the target, in [0, 1]
    history: list[tuple[float, float]] = field(default_factory=list)  # (boost, score)
    cached: bool = False


@dataclass(frozen=True)
class Bounds:
    lower: float
    upper: float
    prior_mean: float
    prior_sd: float

    @classmethod
    def from_scale(cls, scale: float) -> "Bounds":
        """Bounds from the residual's typical norm at the hook layer, in latent units: a push
        about the size of the residual itself is where answers start to derail."""
        return cls(0.0, 4.0 * scale, 1.0 * scale, 0.75 * scale)


def direction_confidence(score: float, target: float, weight: float = BELIEF_WEIGHT) -> float:
    """P(true score > target) under a Beta(0.5 + w*s, 0.5 + w*(1-s)) belief about the score."""
    s = float(np.clip(score, 0.0, 1.0))
    return float(beta.sf(target, 0.5 + weight * s, 0.5 + weight * (1.0 - s)))


async def bisect_boost(
    score_fn: ScoreFn,
    bounds: Bounds,
    target: float = 0.3,
    max_trials: int = 10,
    tolerance: float = 0.1,
) -> CalibrationResult:
    grid = np.linspace(bounds.lower, bounds.upper, GRID_POINTS)
    posterior = norm.pdf(grid, bounds.prior_mean, bounds.prior_sd) + 1e-12
    posterior /= posterior.sum()
    history: list[tuple[float, float]] = []
    for trial in range(max_trials):
        x = float(grid[np.searchsorted(np.cumsum(posterior), 0.5)])
        s = float(await score_fn(x, trial))
        history.append((x, s))
        if abs(s - target) <= tolerance + 1e-9:
            return CalibrationResult(x, trial + 1, s, history)
        q = direction_confidence(s, target)
        posterior = posterior * np.where(grid > x, q, 1.0 - q)
        posterior /= posterior.sum()
    x_best, s_best = min(history, key=lambda h: abs(h[1] - target))
    median = float(grid[np.searchsorted(np.cumsum(posterior), 0.5)])
    # the posterior median is the estimate; the score reported is the nearest one observed
    return CalibrationResult(median, len(history), s_best, history)


def prompt_set_hash(prompts: list[str]) -> str:
    return hashlib.sha1("\n".join(prompts).encode()).hexdigest()[:12]


class ThresholdCache:
    """jsonl rows {key..., threshold, trials, score}; rewritten atomically on every insert."""

    KEY_FIELDS = ("model", "dictionary", "latent", "grader", "target", "prompts")

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else cache_dir() / "thresholds.jsonl"
        self._lock = threading.Lock()

    @staticmethod
    def key(**fields) -> str:
        return json.dumps({k: fields[k] for k in ThresholdCache.KEY_FIELDS}, sort_keys=True)

    def get(self, **fields) -> CalibrationResult | None:
        wanted = self.key(**fields)
        for row in reversed(read_jsonl(self.path)):
            if self.key(**row) == wanted:
                return CalibrationResult(row["threshold"], row["trials"], row["score"], [tuple(h) for h in row.get("history", [])], cached=True)
        return None

    def put(self, result: CalibrationResult, **fields) -> None:
        row = {**{k: fields[k] for k in self.KEY_FIELDS}, **asdict(result)}
        row.pop("cached")
        with self._lock:
            rows = [r for r in read_jsonl(self.path) if self.key(**r) != self.key(**fields)]
            atomic_write_jsonl(self.path, [*rows, row])

    def thresholds(self, **fields) -> dict[int, float]:
        """Cached thresholds of every latent that matches the other key fields."""
        match = {k: v for k, v in fields.items() if k in self.KEY_FIELDS and k != "latent"}
        return {
            int(r["latent"]): float(r["threshold"])
            for r in read_jsonl(self.path)
            if all(r.get(k) == v for k, v in match.items())
        }
