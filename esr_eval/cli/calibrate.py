"""`esr-eval calibrate`: find and cache each latent's threshold, with a progress bar."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from esr_eval.provider import SteeredModelAPI

import argparse

from esr_eval.cli.common import (
    add_model_args,
    check_latents_fit,
    console,
    latent_indices,
    model_args,
)
from esr_eval.config import OFFLINE_GRADER, PROVIDER, TaskArgs


def _calibrate(args: argparse.Namespace) -> int:
    import asyncio

    import numpy as np
    from inspect_ai.model import get_model
    from rich.progress import Progress
    from rich.table import Table

    from esr_eval.calibration.calibrator import Calibrator
    from esr_eval.config import int_list
    from esr_eval.errors import UsageError
    from esr_eval.sampling.latents import offline_concreteness, sample_latents
    from esr_eval.sampling.prompts import prompt_texts

    settings = TaskArgs.parse(
        dict(target=args.target, calibration_trials=args.trials, calibration_rounds=args.rounds, max_tokens=args.max_tokens,
             temperature=args.temperature, top_p=args.top_p, seed=args.seed, n_latents=args.n_latents),
        "esr-eval calibrate",
    )
    prompts = prompt_texts(args.prompts)
    check_latents_fit(args, args.latents)
    model = get_model(f"{PROVIDER}/{args.model}", **model_args(args))
    api = cast("SteeredModelAPI", model.api)  # a steered/ model
    engine = api.engine
    if engine.dictionary is None:
        raise UsageError("calibration needs a dictionary: use a preset or --dictionary")
    messages = [[{"role": "user", "content": p}] for p in prompts]
    latents = int_list(args.latents) or sample_latents(
        engine, settings.n_latents, messages, settings.seed, concreteness=offline_concreteness(engine.dictionary)).latents
    for k in latents:
        engine.dictionary.check_latent(k)
    labels = {k: engine.dictionary.label(k) or f"latent {k}" for k in latents}
    with Progress() as progress:
        bars = {k: progress.add_task(f"latent {k}", total=settings.calibration_trials) for k in latents}
        calibrator = Calibrator(
            api, prompts, settings.target, settings.calibration_trials, settings.generation(), args.cache, settings.seed,
            model=model, grader=get_model(args.grader), on_trial=lambda k, boost, score: progress.advance(bars[k]),
            rounds=settings.calibration_rounds, method=args.method,
        )

        async def run_all() -> list:
            return await asyncio.gather(*(calibrator.threshold(k, labels[k]) for k in latents))

        results = asyncio.run(run_all())
        for k in latents:
            progress.update(bars[k], completed=settings.calibration_trials)
    table = Table(title=f"thresholds -> {calibrator.cache.path}")
    for col in ("latent", "label", "threshold", "judge calls", "score", "judge errors", "cached"):
        table.add_column(col)
    for k, r in zip(latents, results):
        score = "-" if r.score is None else f"{r.score:.2f}"
        table.add_row(str(k), labels[k], f"{r.threshold:.2f}", str(r.trials), score, str(r.judge_errors),
                      "yes" if r.cached else "")
    console().print(table)
    fresh = [r.trials for r in results if not r.cached]
    if fresh:
        console().print(f"median judge calls per latent: {float(np.median(fresh)):g}")
    return 0


def add_calibrate(sub) -> None:
    d = TaskArgs
    cmd = sub.add_parser("calibrate", help="find (and cache) each latent's boost threshold")
    add_model_args(cmd)
    cmd.add_argument("--latents", type=latent_indices, help="comma-separated latents (default: sample --n-latents)")
    cmd.add_argument("--n-latents", type=int, default=d.n_latents)
    cmd.add_argument("--prompts", help="prompt file (default: the packaged set)")
    cmd.add_argument("--grader", default=OFFLINE_GRADER, help="Inspect model that judges (default: offline grader)")
    cmd.add_argument("--target", type=float, default=d.target)
    cmd.add_argument("--trials", type=int, default=d.calibration_trials, help="scored answers per latent, over all rounds")
    cmd.add_argument("--rounds", type=int, default=d.calibration_rounds, help="sequential rounds (1-4) of parallel probes")
    cmd.add_argument("--method", default="rounds", choices=["rounds", "bisection"], help="bisection: the older sequential search")
    cmd.add_argument("--max-tokens", type=int, default=d.max_tokens)
    cmd.add_argument("--temperature", type=float, default=d.temperature)
    cmd.add_argument("--top-p", type=float, default=d.top_p)
    cmd.add_argument("--seed", type=int, default=d.seed)
    cmd.add_argument("--cache", help="threshold cache jsonl (default: the user cache dir)")
    cmd.set_defaults(func=_calibrate)
