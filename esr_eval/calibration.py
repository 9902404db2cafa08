"""How hard to push each latent: probabilistic bisection (Waeber, Frazier & Henderson 2011) of the
boost toward a target first-attempt score, and a jsonl cache of the thresholds found.

The judge's first-attempt score falls as the boost grows. Each trial generates at the posterior
median x and scores it (s in [0, 1]); a Beta(0.5 + w*s, 0.5 + w*(1-s)) belief gives
q = P(true score at x > target) = P(threshold > x), and the posterior is multiplied by q above x
and by 1 - q below. A trial within `tolerance` of the target ends the search early.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from inspect_ai.model import ChatMessageUser, GenerateConfig, Model, get_model
from scipy.stats import beta, norm

from esr_eval.io import atomic_write_jsonl, read_jsonl
from esr_eval.provider import SteeredModelAPI
from esr_eval.scorers import OFFLINE_GRADER, judge_answer
from esr_eval.steering.intervention import Intervention, steering_to_extra_body
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


def sample_seed(seed: int, *parts: Any) -> int:
    return int(hashlib.sha1(":".join(map(str, (seed, *parts))).encode()).hexdigest()[:8], 16)


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


def resolve_grader() -> Model:
    """The `grader` role, else the offline grader: never the evaluated model."""
    return get_model(role="grader", default=OFFLINE_GRADER)


class Calibrator:
    """Thresholds per latent: cached, else found by bisection. Samples of one latent await one
    calibration; calibrations of different latents run concurrently, so their generations batch."""

    def __init__(
        self,
        api: SteeredModelAPI,
        prompts: list[str],
        target: float,
        max_trials: int,
        generation: dict[str, Any],
        cache_path: str | None,
        seed: int,
        dictionary_id: str | None = None,
        model: Model | None = None,
        grader: Model | None = None,
        on_trial: Callable[[int, float, float], None] | None = None,
    ) -> None:
        """`model` and `grader` default to the running eval's model and grader role;
        `on_trial(latent, boost, score)` reports progress."""
        self.api = api
        self.model = model
        self.grader = grader
        self.on_trial = on_trial
        self.prompts = prompts
        self.target = target
        self.max_trials = max_trials
        self.generation = generation
        self.cache = ThresholdCache(cache_path)
        self.seed = seed
        self.dictionary_id = dictionary_id or api.dictionary_id()
        self._running: dict[int, asyncio.Future] = {}
        self._residual_norm: float | None = None

    def bounds(self, latent: int) -> Bounds:
        """Prior and bounds in the latent's own units: the residual's median norm at the layer
        over the prompts, divided by the norm of the latent's decoder direction."""
        engine = self.api.engine
        if self._residual_norm is None:
            import torch

            resid = engine.prompt_residuals([[{"role": "user", "content": p}] for p in self.prompts[:8]])
            self._residual_norm = float(torch.cat(resid).norm(dim=-1).median())
        dictionary = engine.resolve_dictionary(self.dictionary_id)
        return Bounds.from_scale(self._residual_norm / float(dictionary.W_dec[latent].detach().norm().clamp_min(1e-8)))

    def key(self, latent: int, grader: Model) -> dict[str, Any]:
        return dict(
            model=self.api.model_key,
            dictionary=self.dictionary_id,
            latent=latent,
            grader=str(grader),
            target=self.target,
            prompts=prompt_set_hash(self.prompts),
        )

    async def threshold(self, latent: int, label: str) -> CalibrationResult:
        if latent not in self._running:
            self._running[latent] = asyncio.ensure_future(self._calibrate(latent, label))
        return await asyncio.shield(self._running[latent])

    async def _calibrate(self, latent: int, label: str) -> CalibrationResult:
        grader = self.grader or resolve_grader()
        key = self.key(latent, grader)
        cached = self.cache.get(**key)
        if cached is not None:
            return cached
        model = self.model or get_model()

        async def first_score(boost: float, trial: int) -> float:
            prompt = self.prompts[sample_seed(self.seed, latent, trial) % len(self.prompts)]
            steering = steering_to_extra_body([Intervention(latent, boost)], self.dictionary_id)
            config = GenerateConfig(extra_body=steering, seed=sample_seed(self.seed, "calibration", latent, trial), **self.generation)
            answer = (await model.generate([ChatMessageUser(content=prompt)], config=config)).completion
            judged = await judge_answer(grader, prompt, answer, label)
            score = 0.0 if judged.error or not judged.attempts else judged.attempts[0].score / 100.0
            if self.on_trial:
                self.on_trial(latent, boost, score)
            return score

        result = await bisect_boost(first_score, self.bounds(latent), self.target, self.max_trials)
        self.cache.put(result, **key)
        return result

    async def all_thresholds(self, labels: dict[int, str]) -> dict[int, float]:
        results = await asyncio.gather(*(self.threshold(k, v) for k, v in labels.items()))
        return {k: r.threshold for k, r in zip(labels, results)}


# ------------------------------------------------------------------ command
def _calibrate(args) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from esr_eval.latents import load_prompts, sample_latents
    from esr_eval.tasks.common import PROMPTS_FILE, as_list

    if not 0.0 < args.target < 1.0:
        raise ValueError(f"--target {args.target} must lie in (0, 1)")
    prompts = [p["prompt"] for p in load_prompts(args.prompts or PROMPTS_FILE)]
    model_args = {k: v for k, v in dict(dictionary=args.dictionary, layer=args.layer, labels=args.labels, dtype=args.dtype, device=args.device).items() if v is not None}
    model = get_model(f"steered/{args.model}", **model_args)
    api: SteeredModelAPI = model.api  # type: ignore[assignment]
    engine = api.engine
    if engine.dictionary is None:
        raise ValueError("calibration needs a dictionary: use a preset or --dictionary")
    latents = as_list(args.latents) or sample_latents(engine, args.n_latents, [[{"role": "user", "content": p}] for p in prompts], args.seed).latents
    for k in latents:
        engine.dictionary.check_latent(k)
    labels = {k: engine.dictionary.label(k) or f"latent {k}" for k in latents}
    generation = {"max_tokens": args.max_tokens, "temperature": args.temperature}
    with Progress() as progress:
        bars = {k: progress.add_task(f"latent {k}", total=args.trials) for k in latents}
        calibrator = Calibrator(
            api, prompts, args.target, args.trials, generation, args.cache, args.seed,
            model=model, grader=get_model(args.grader), on_trial=lambda k, boost, score: progress.advance(bars[k]),
        )

        async def run_all() -> list[CalibrationResult]:
            return await asyncio.gather(*(calibrator.threshold(k, labels[k]) for k in latents))

        results = asyncio.run(run_all())
        for k in latents:
            progress.update(bars[k], completed=args.trials)
    table = Table(title=f"thresholds -> {calibrator.cache.path}")
    for col in ("latent", "label", "threshold", "judge calls", "score", "cached"):
        table.add_column(col)
    for k, r in zip(latents, results):
        table.add_row(str(k), labels[k], f"{r.threshold:.2f}", str(r.trials), f"{r.score:.2f}", "yes" if r.cached else "")
    Console().print(table)
    fresh = [r.trials for r in results if not r.cached]
    if fresh:
        Console().print(f"median judge calls per latent: {float(np.median(fresh)):g}")
    return 0


def register(sub) -> None:
    from esr_eval.explore import add_model_args

    cmd = sub.add_parser("calibrate", help="find (and cache) each latent's boost threshold")
    add_model_args(cmd)
    cmd.add_argument("--latents", help="comma-separated latents (default: sample --n-latents)")
    cmd.add_argument("--n-latents", type=int, default=8)
    cmd.add_argument("--prompts", help="prompt file (default: the packaged set)")
    cmd.add_argument("--grader", default=OFFLINE_GRADER, help="Inspect model that judges (default: offline grader)")
    cmd.add_argument("--target", type=float, default=0.3)
    cmd.add_argument("--trials", type=int, default=10)
    cmd.add_argument("--max-tokens", type=int, default=384)
    cmd.add_argument("--temperature", type=float, default=0.6)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--cache", help="threshold cache jsonl (default: the user cache dir)")
    cmd.set_defaults(func=_calibrate)
