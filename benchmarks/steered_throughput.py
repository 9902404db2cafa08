"""Throughput of steered generation on the embedded model, as ratios measured in one run.

  python benchmarks/steered_throughput.py [--model smollm2-135m] [--dtype float32] [--tokens 64]

Prints:
  1. steered batch-16 tokens/s / unsteered batch-16 tokens/s (same engine; goal >= 0.90),
     and the engine's unsteered batch against Hugging Face `generate` on the same batch;
  2. 16 concurrent samples of an Inspect eval through the `steered` provider against the same
     16 requests generated one at a time with the hook (goal >= 6x);
  3. peak resident memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import torch

PROMPTS = [
    "Explain how to brew a good cup of coffee.",
    "How do you change a flat tyre?",
    "Explain how rain forms in clouds.",
    "How do you make pancakes from scratch?",
]


def tokens_per_s(fn) -> float:
    start = time.perf_counter()
    n_tokens = fn()
    return n_tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("INSPECT_DISPLAY", "none")

    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.solver import Generate, TaskState, solver

    from esr_eval.provider import load_engine
    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.intervention import Intervention, steering_to_extra_body

    lm = load_engine(args.model, dtype=args.dtype)
    width = lm.dictionary.d_sae
    messages = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(args.batch)]
    steering = [(Intervention((97 * i) % width, 40.0),) for i in range(args.batch)]

    def requests(steered: bool) -> list[GenerationRequest]:
        # greedy, no EOS stop inside the budget is not guaranteed: count the tokens made
        return [GenerationRequest(m, s if steered else (), args.tokens, 0.0, seed=i) for i, (m, s) in enumerate(zip(messages, steering))]

    def run_engine(steered: bool) -> int:
        return sum(r.completion_tokens for r in lm.generate(requests(steered)))

    def run_hf_generate() -> int:
        tok = lm.tokenizer
        rows = [lm.prompt_ids(m) for m in messages]
        ids, mask = lm._left_pad(rows)
        out = lm.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[:, ids.shape[1] :]
        return int(sum(((row != tok.pad_token_id).cumsum(0) > 0).sum() for row in new))

    run_engine(False)  # warm-up
    best = lambda fn: max(tokens_per_s(fn) for _ in range(args.repeats))
    plain = best(lambda: run_engine(False))
    steered = best(lambda: run_engine(True))
    hf = best(run_hf_generate)
    print(f"batch {args.batch}, {args.tokens} new tokens, {args.dtype}, torch threads {torch.get_num_threads()}")
    print(f"  engine unsteered     {plain:8.1f} tok/s")
    print(f"  engine steered       {steered:8.1f} tok/s")
    print(f"  HF generate (plain)  {hf:8.1f} tok/s")
    print(f"steered / unsteered batch tokens/s:        {steered / plain:.3f}  (goal >= 0.90)")
    print(f"engine unsteered / HF generate tokens/s:   {plain / hf:.3f}")

    @solver
    def steer_each():
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            k = state.metadata["latent"]
            return await generate(state, extra_body=steering_to_extra_body([Intervention(k, 40.0)], lm.dictionary_id), seed=state.metadata["seed"], max_tokens=args.tokens, temperature=0.0)

        return solve

    samples = [Sample(input=m[0]["content"], id=i, metadata={"latent": s[0].latent, "seed": i}) for i, (m, s) in enumerate(zip(messages, steering))]
    start = time.perf_counter()
    log = eval(Task(dataset=samples, solver=steer_each()), model=f"steered/{args.model}", model_args={"dtype": args.dtype}, max_connections=args.batch, log_dir="/tmp/esr-benchmark-logs", display="none")[0]
    concurrent_s = time.perf_counter() - start
    assert log.status == "success", log.error
    start = time.perf_counter()
    for req in requests(True):
        lm.generate([req])
    serial_s = time.perf_counter() - start
    print(f"  Inspect eval, {args.batch} concurrent samples: {concurrent_s:6.1f} s (model already loaded)")
    print(f"  the same {args.batch} requests one at a time:   {serial_s:6.1f} s")
    print(f"one-at-a-time time / concurrent Inspect eval time: {serial_s / concurrent_s:.2f}x  (goal >= 6x)")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
