"""Few-round calibration against sequential bisection on the same latents of the embedded model.

  python benchmarks/calibration_accuracy.py [--n-latents 16] [--held-out 6] [--trials 6] [--rounds 2]

Both searches run with the offline grader and the default answer settings (384 tokens,
temperature 0.6), bisection with its old budget (10 answers, ending early at a score within 0.1
of the target). Then every threshold found is checked on `--held-out` fresh answers per latent
(other seeds and prompts): the mean first-attempt score there is what the eval's samples get.
Prints, per method: sequential rounds, answers, wall time, the median |first score - target| and
the share within +-0.1 of the target, both for the calibration's own nearest score and for the
held-out mean at the threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n-latents", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=6)
    parser.add_argument("--trials", type=int, default=None, help="answers per latent of the few-round search (default: the task's)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the few-round search (default: the task's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("INSPECT_DISPLAY", "none")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from inspect_ai.model import ChatMessageUser, GenerateConfig, get_model

    from esr_eval.calibration.calibrator import Calibrator
    from esr_eval.config import OFFLINE_GRADER, TaskArgs
    from esr_eval.judge.protocol import judge_answer
    from esr_eval.sampling.latents import sample_latents
    from esr_eval.sampling.prompts import prompt_texts
    from esr_eval.sampling.seeds import derive_seed
    from esr_eval.steering.intervention import Intervention, steering_to_extra_body

    task = TaskArgs()
    trials = args.trials or task.calibration_trials
    rounds = args.rounds or task.calibration_rounds
    prompts = prompt_texts(None)
    model = get_model(f"steered/{args.model}", config=GenerateConfig(max_connections=64), max_batch_size=64)
    grader = get_model(OFFLINE_GRADER)
    engine = model.api.engine
    latents = sample_latents(engine, args.n_latents, [[{"role": "user", "content": p}] for p in prompts], args.seed).latents
    labels = {k: engine.dictionary.label(k) or f"latent {k}" for k in latents}
    methods = {"bisection": dict(method="bisection", max_trials=10), "rounds": dict(method="rounds", max_trials=trials, rounds=rounds)}

    async def first_score(latent: int, boost: float, i: int) -> float:
        prompt = prompts[derive_seed(args.seed, "held-out prompt", latent, i) % len(prompts)]
        config = GenerateConfig(extra_body=steering_to_extra_body([Intervention(latent, boost)], engine.dictionary_id),
                                seed=derive_seed(args.seed, "held-out", latent, i), **task.generation())  # fmt: skip
        answer = (await model.generate([ChatMessageUser(content=prompt)], config=config)).completion
        judged = await judge_answer(grader, prompt, answer, labels[latent])
        return 0.0 if judged.error or not judged.attempts else judged.attempts[0].score / 100.0

    async def run() -> dict:
        out = {}
        for name, spec in methods.items():
            calibrator = Calibrator(model.api, prompts, task.target, spec["max_trials"], task.generation(),
                                    os.path.join(tempfile.mkdtemp(), "t.jsonl"), args.seed, model=model, grader=grader,
                                    rounds=spec.get("rounds", rounds), method=spec["method"])  # fmt: skip
            start = time.perf_counter()
            results = await asyncio.gather(*(calibrator.threshold(k, labels[k]) for k in latents))
            out[name] = {"results": dict(zip(latents, results)), "wall": time.perf_counter() - start}
        checks = [(name, k, i) for name in methods for k in latents for i in range(args.held_out)]
        scores = await asyncio.gather(*(first_score(k, out[name]["results"][k].threshold, i) for name, k, i in checks))
        for (name, k, _), s in zip(checks, scores):
            out[name].setdefault("held_out", {}).setdefault(k, []).append(s)
        return out

    start = time.perf_counter()
    out = asyncio.run(run())
    target = task.target
    print(f"{args.model}, {len(latents)} latents {latents}, target {target}, offline grader, {args.held_out} held-out answers per latent and method")
    for name, spec in methods.items():
        o = out[name]
        results = o["results"]
        own = np.array([abs(r.score - target) for r in results.values() if r.score is not None])  # None: no trial judged
        held = np.array([abs(float(np.mean(o["held_out"][k])) - target) for k in latents])
        answers = [r.trials for r in results.values()]
        seq = "up to 10 sequential" if name == "bisection" else f"{rounds} rounds of up to {max(1, -(-trials // rounds))} parallel"
        print(f"{name:9s} ({seq} answers): {statistics.mean(answers):.1f} answers/latent, calibration wall {o['wall']:.0f} s")
        print(f"  calibration's nearest score: median |score - target| {np.median(own):.3f}, within +-0.1: {np.mean(own <= 0.1 + 1e-9):.2f}")
        print(f"  held-out mean first score at the threshold: median |score - target| {np.median(held):.3f}, within +-0.1: {np.mean(held <= 0.1 + 1e-9):.2f}")
    print(f"total wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
