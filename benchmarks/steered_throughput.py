"""Throughput of steered generation, as ratios of two ways measured in one run.

  python benchmarks/steered_throughput.py [--model smollm2-135m] [--skip-eval] [--gpu]

On the embedded model (CPU) it prints:
  1. the default eval (`inspect eval esr_eval/steering_resistance`, no flags, in a child process)
     twice over one new threshold cache, neither reading the thresholds shipped with the package:
     first with every threshold calibrated (goal < 4 min wall, start-up included), then with all
     of them cached (goal < 2 min); the cached run's generated tokens per second (whole wall time,
     start-up and grading included) against Hugging Face `generate`'s batch-64 tokens per second in
     the eval's dtype, run to the eval's answer budget (goal >= 0.5), and also at `--tokens` new
     tokens; the peak resident memory of either run (goal < 2.5 GB);
  2. for each backend (hf; vllm when vLLM and its backend import): steered / unsteered tokens/s
     on the same batch of 1, 16 and 64 rows, every row steered (goal >= 0.9), and the vLLM backend
     against the HF backend;
  3. 16 concurrent samples of an Inspect eval through the `steered` provider against the same 16
     requests one at a time (goal >= 6x), both on engines already loaded;
  4. the HF engine's own batch-64 tokens/s against HF `generate` on the same batch, at `--tokens`
     new tokens and at the eval's answer budget.
With --gpu it runs `benchmarks/gpu_throughput.py` instead (random-weight Llamas on the GPU, only
torch and transformers needed; the arguments after --gpu go to it).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from esr_eval.config import GENERATION

PROMPTS = [
    "Explain how to brew a good cup of coffee.",
    "How do you change a flat tyre?",
    "Explain how rain forms in clouds.",
    "How do you make pancakes from scratch?",
]
DEFAULT_MODEL = "smollm2-135m"


def timed(fn) -> tuple[float, float]:
    """(tokens made, seconds)."""
    start = time.perf_counter()
    made = fn()
    return made, time.perf_counter() - start


def rate(fn, repeats: int = 2) -> float:
    """Best tokens/s of `repeats` runs (machines shared with other work swing run to run)."""
    return max(made / spent for made, spent in (timed(fn) for _ in range(repeats)))


def hf_generate_rate(model, tokenizer, rows: list[list[int]], new_tokens: int, repeats: int = 2) -> float:
    """Hugging Face `generate`, greedy, left padding; counts the new tokens that are not padding."""
    device = model.get_input_embeddings().weight.device
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = (torch.arange(width, device=device)[None, :] >= torch.tensor([width - len(r) for r in rows], device=device)[:, None]).long()

    def run() -> int:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad)
        new = out[:, width:]
        return int(((new != pad).cumsum(-1) > 0).sum())

    with torch.inference_mode():  # warm-up, a few tokens
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=pad)
    return rate(run, repeats)


def engine_rates(lm, batch: int, tokens: int, steer_value: float, steered: bool = True, repeats: int = 2) -> tuple[float, float | None]:
    """(unsteered, steered) tokens/s of the engine on the same greedy batch."""
    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.intervention import Intervention

    width = lm.dictionary.d_sae
    messages = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(batch)]

    def run(steer: bool, new_tokens: int = tokens) -> int:
        reqs = [GenerationRequest(m, (Intervention((97 * i) % width, steer_value),) if steer else (), new_tokens, 0.0, seed=i)
                for i, m in enumerate(messages)]  # fmt: skip
        return sum(r.completion_tokens for r in lm.generate(reqs))

    run(False, min(tokens, 16))  # warm-up
    return rate(lambda: run(False), repeats), rate(lambda: run(True), repeats) if steered else None


# the eval in a child process that reads no thresholds shipped with the package
EVAL_CHILD = """
import atexit, resource, sys
from pathlib import Path
peak_file = Path(sys.argv[2])
atexit.register(lambda: peak_file.write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
from esr_eval.calibration import cache
cache.shipped_threshold_files = lambda: []
from inspect_ai._cli.main import main
sys.argv = ["inspect", "eval", "esr_eval/steering_resistance", "--log-dir", sys.argv[1]]
main()
"""


def default_eval(cache: Path, log_dir: Path) -> dict:
    """The no-flag eval in a child process over the threshold cache in `cache` alone (the
    converted model folder is shared, as after a first run)."""
    from inspect_ai.log import list_eval_logs, read_eval_log

    env = {**os.environ, "ESR_EVAL_CACHE": str(cache), "INSPECT_DISPLAY": "none"}
    start = time.perf_counter()
    peak_file = log_dir / "peak_rss_kib"
    proc = subprocess.run([sys.executable, "-c", EVAL_CHILD, str(log_dir), str(peak_file)],
                          env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the default eval failed:\n{proc.stderr[-3000:]}")
    peak_kib = int(peak_file.read_text())
    log = read_eval_log(list_eval_logs(str(log_dir))[0].name)
    if log.status != "success":
        raise SystemExit(f"the default eval ended {log.status}: {log.error}")
    usage = {name: u for name, u in log.stats.model_usage.items() if name.startswith("steered/")}
    tokens = sum(u.output_tokens for u in usage.values())
    thresholds = cache / "thresholds.jsonl"
    cached = len(thresholds.read_text().splitlines()) if thresholds.exists() else 0
    return {"wall": wall, "tokens": tokens, "peak_gib": peak_kib / 2**20, "samples": len(log.samples or []), "cached": cached}


def default_evals() -> tuple[dict, dict]:
    """(fresh, cached): the eval with an empty threshold cache and no shipped thresholds, then
    again over the cache the first run filled."""
    cache = Path(tempfile.mkdtemp(prefix="esr-bench-cache-"))
    from esr_eval.steering.models import cache_dir

    models = cache_dir() / "models"
    if models.exists():
        (cache / "models").symlink_to(models.resolve())
    runs = tuple(default_eval(cache, Path(tempfile.mkdtemp(prefix="esr-bench-eval-")), ) for _ in range(2))
    # the second run finds every threshold the first wrote to its cache
    shutil.rmtree(cache, ignore_errors=True)
    return runs  # type: ignore[return-value]


def inspect_concurrency(lm, model: str, batch: int, tokens: int) -> tuple[float, float]:
    """(concurrent Inspect eval seconds, one-at-a-time seconds) for `batch` steered requests."""
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.solver import Generate, TaskState, solver

    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.intervention import Intervention, steering_to_extra_body

    width = lm.dictionary.d_sae
    latents = [(97 * i) % width for i in range(batch)]

    @solver
    def steer_each():
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            body = steering_to_extra_body([Intervention(state.metadata["latent"], 40.0)], lm.dictionary_id)
            return await generate(state, extra_body=body, seed=state.metadata["seed"], max_tokens=tokens, temperature=0.0)

        return solve

    samples = [Sample(input=PROMPTS[i % len(PROMPTS)], id=i, metadata={"latent": k, "seed": i}) for i, k in enumerate(latents)]

    def run_eval(dataset: list[Sample]) -> float:
        start = time.perf_counter()
        log = eval(Task(dataset=dataset, solver=steer_each()), model=f"steered/{model}", model_args={"max_batch_size": batch},
                   max_connections=batch, log_dir=tempfile.mkdtemp(prefix="esr-bench-logs-"), display="none")[0]  # fmt: skip
        assert log.status == "success", log.error
        return time.perf_counter() - start

    run_eval(samples[:2])  # the provider loads its engine (its own, for this batch size) outside the timing, as `lm` was
    concurrent = run_eval(samples)
    start = time.perf_counter()
    for i, k in enumerate(latents):
        lm.generate([GenerationRequest([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], (Intervention(k, 40.0),), tokens, 0.0, seed=i)])
    return concurrent, time.perf_counter() - start


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None and importlib.util.find_spec("esr_eval.steering.backends.vllm") is not None


def cpu_main(args: argparse.Namespace) -> None:
    from esr_eval.steering.load import load_engine

    print(f"machine: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} at start")
    if not args.skip_eval:
        fresh, run = default_evals()
        for name, r in (("fresh thresholds", fresh), ("thresholds cached", run)):
            print(f"  default eval, {name}: {r['samples']} samples, {r['tokens']} tokens generated, {r['wall']:.0f} s, "
                  f"peak RSS {r['peak_gib']:.2f} GB, {r['cached']} thresholds in the cache after it")  # fmt: skip
    lm = load_engine(args.model)  # the default dtype, as the eval's
    rows = [lm.prompt_ids([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(64)]
    hf64 = hf_generate_rate(lm.model, lm.tokenizer, rows, args.tokens)
    print(f"  HF generate {lm.dtype}, batch 64, {args.tokens} new tokens: {hf64:.1f} tok/s")
    # the like-for-like reference: the eval's answers run to its token budget, and every decode
    # step attends over all the tokens before it, so long answers make fewer tokens per second
    budget = GENERATION.max_tokens
    hf64_budget = hf_generate_rate(lm.model, lm.tokenizer, rows, budget, repeats=1)
    print(f"  HF generate {lm.dtype}, batch 64, {budget} new tokens (the eval's answer budget): {hf64_budget:.1f} tok/s")
    if not args.skip_eval:
        eval_rate = run["tokens"] / run["wall"]
        print(f"default eval tokens/s / HF generate batch-64 tokens/s at the eval's {budget}-token budget: "
              f"{eval_rate / hf64_budget:.2f}  (goal >= 0.5; eval {eval_rate:.1f} tok/s over its whole wall time, {lm.dtype})")  # fmt: skip
        print(f"default eval tokens/s / HF generate batch-64 tokens/s at {args.tokens} new tokens: {eval_rate / hf64:.2f}")
        print(f"default eval wall time, fresh thresholds: {fresh['wall'] / 60:.1f} min  (goal < 4)")
        print(f"default eval wall time, thresholds cached: {run['wall'] / 60:.1f} min  (goal < 2)")
        print(f"default eval peak RSS: {max(fresh['peak_gib'], run['peak_gib']):.2f} GB  (goal < 2.5)")

    engine64, _ = engine_rates(lm, 64, args.tokens, 40.0, steered=False)
    print(f"HF engine / HF generate, batch 64 {lm.dtype} unsteered tokens/s, {args.tokens} new tokens: {engine64 / hf64:.2f}")
    engine64_budget, _ = engine_rates(lm, 64, budget, 40.0, steered=False, repeats=1)
    print(f"HF engine / HF generate, batch 64 {lm.dtype} unsteered tokens/s, {budget} new tokens: {engine64_budget / hf64_budget:.2f}")

    backends = ["hf"] + (["vllm"] if vllm_available() else [])
    plain_rates = {}
    for name in backends:
        engine = lm if name == "hf" else load_engine(args.model, dtype=lm.dtype, engine=name)
        for batch in args.batches:
            plain, steered = engine_rates(engine, batch, args.tokens, 40.0)
            plain_rates.setdefault(name, plain)
            print(f"  {name} engine {engine.dtype} batch {batch}: unsteered {plain:.1f} tok/s, steered {steered:.1f} tok/s")
            print(f"{name} steered / unsteered tokens/s, batch {batch}, every row steered: {steered / plain:.2f}  (goal >= 0.9)")
    if "vllm" in plain_rates:
        print(f"vllm / hf backend tokens/s, same requests: {plain_rates['vllm'] / plain_rates['hf']:.2f}")
    else:
        print("vllm backend: not importable here (pip install \"esr-eval[vllm]\"): no vllm rows")

    concurrent, serial = inspect_concurrency(lm, args.model, 16, args.tokens)
    print(f"  Inspect eval, 16 concurrent samples: {concurrent:.1f} s; the same 16 requests one at a time: {serial:.1f} s")
    print(f"one-at-a-time time / concurrent Inspect eval time: {serial / concurrent:.2f}x  (goal >= 6x)")
    print(f"benchmark process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GB; load average {os.getloadavg()[0]:.1f} at end")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per row in the engine and HF generate rows")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="batches of the steered / unsteered rows")
    parser.add_argument("--skip-eval", action="store_true", help="leave out the two default evals (about 5 minutes)")
    parser.add_argument("--gpu", action="store_true", help="run benchmarks/gpu_throughput.py (the arguments after --gpu go to it)")
    if "--gpu" in sys.argv:
        import runpy

        sys.argv = [str(Path(__file__).with_name("gpu_throughput.py")), *sys.argv[sys.argv.index("--gpu") + 1 :]]
        runpy.run_path(sys.argv[0], run_name="__main__")
        return
    args = parser.parse_args()
    os.environ.setdefault("INSPECT_DISPLAY", "none")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, for vLLM's CPU build
    cpu_main(args)


if __name__ == "__main__":
    main()
