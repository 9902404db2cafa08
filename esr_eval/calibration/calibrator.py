"""Thresholds per latent during an eval: cached, else found in a few rounds of parallel probes
(`rounds.py`; `method="bisection"` keeps the sequential search) with the evaluated model and the
grader role. Samples of one latent await one calibration; calibrations of different latents run
concurrently, and each round probes several boosts at once, so the rows of every latent under
calibration share the engine's batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import anyio
from inspect_ai.model import ChatMessageUser, GenerateConfig, Model, get_model

from esr_eval.calibration import rounds as few_rounds
from esr_eval.calibration.bisection import Bounds, CalibrationResult, bisect_boost
from esr_eval.calibration.cache import ThresholdCache, prompt_set_hash
from esr_eval.config import GRADER_ROLE, OFFLINE_GRADER
from esr_eval.judge.protocol import grader_identity, judge_answer
from esr_eval.provider import SteeredModelAPI
from esr_eval.sampling.seeds import derive_seed
from esr_eval.steering.intervention import Intervention, steering_to_extra_body
from esr_eval.steering.scale import median_residual_norm, steering_scale

METHODS = ("rounds", "bisection")


def resolve_grader() -> Model:
    """The `grader` role, else the offline grader: never the evaluated model."""
    return get_model(role=GRADER_ROLE, default=OFFLINE_GRADER)


class Calibrator:
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
        on_trial: Callable[[int, float, float | None], None] | None = None,
        rounds: int = few_rounds.ROUNDS,
        method: str = "rounds",
    ) -> None:
        """`generation` holds the GenerateConfig fields of an answer (max_tokens, temperature,
        top_p); `model` and `grader` default to the running eval's model and grader role;
        `on_trial(latent, boost, score)` reports progress (score None: a judge error). `method` is
        "rounds" (`rounds` rounds of parallel probes, `max_trials` answers in all) or "bisection"
        (sequential)."""
        if method not in METHODS:
            raise ValueError(f"calibration method {method!r} is unknown: use one of {', '.join(METHODS)}")
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
        self.rounds = rounds
        self.method = method
        self._running: dict[int, asyncio.Future] = {}
        self._residual_norm: float | None = None

    async def bounds(self, latent: int) -> Bounds:
        """Prior and bounds in the latent's own units: the residual's median norm at the layer
        over the prompts, divided by the norm of the latent's decoder direction. The read-out
        runs in a worker thread and waits for any generating batch (the hooks are exclusive)."""
        if self._residual_norm is None:
            self._residual_norm = await anyio.to_thread.run_sync(median_residual_norm, self.api.engine, self.prompts)
        dictionary = self.api.engine.resolve_dictionary(self.dictionary_id)
        assert dictionary is not None, "calibration steers a loaded dictionary"
        return Bounds.from_scale(steering_scale(self._residual_norm, dictionary, latent))

    def key(self, latent: int, grader: Model) -> dict[str, Any]:
        return dict(
            model=self.api.model_key,
            dictionary=self.dictionary_id,
            latent=latent,
            grader=grader_identity(grader),
            target=self.target,
            prompts=prompt_set_hash(self.prompts),
            max_tokens=self.generation.get("max_tokens"),
            temperature=self.generation.get("temperature"),
            top_p=self.generation.get("top_p", 1.0),
            repetition_penalty=self.api.repetition_penalty,
            calibration_trials=self.max_trials,
            calibration=self.method_id,
            dtype=self.api.engine.dtype,
            engine=self.api.args.engine,
        )

    @property
    def method_id(self) -> str:
        """The search and its version, in the cache key: thresholds found another way are not reused."""
        return f"{few_rounds.METHOD}x{self.rounds}" if self.method == "rounds" else "bisection@1"

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

        async def first_score(boost: float, trial: int) -> float | None:
            prompt = self.prompts[derive_seed(self.seed, latent, trial) % len(self.prompts)]
            steering = steering_to_extra_body([Intervention(latent, boost)], self.dictionary_id)
            config = GenerateConfig(extra_body=steering, seed=derive_seed(self.seed, "calibration", latent, trial), **self.generation)
            answer = (await model.generate([ChatMessageUser(content=prompt)], config=config)).completion
            judged = await judge_answer(grader, prompt, answer, label)
            if judged.error:
                score = None  # the judge could not grade it: no evidence about the boost
            else:
                score = judged.attempts[0].score / 100.0 if judged.attempts else 0.0
            if self.on_trial:
                self.on_trial(latent, boost, score)
            return score

        bounds = await self.bounds(latent)
        if self.method == "rounds":
            result = await few_rounds.calibrate_in_rounds(first_score, bounds, self.target, self.max_trials, self.rounds)
        else:
            result = await bisect_boost(first_score, bounds, self.target, self.max_trials)
        if result.measured:  # a threshold no trial measured is the prior: never cached
            self.cache.put(result, **key)
        return result

    async def all_thresholds(self, labels: dict[int, str]) -> dict[int, float]:
        results = await asyncio.gather(*(self.threshold(k, v) for k, v in labels.items()))
        return {k: r.threshold for k, r in zip(labels, results)}
