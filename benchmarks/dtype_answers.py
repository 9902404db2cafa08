"""bfloat16 against float32 on the embedded model: speed, and how much bf16 changes the answers.

  python benchmarks/dtype_answers.py [--model smollm2-135m] [--prompts 42] [--tokens 256] [--batch 16]

Prints, from one run:
  1. engine tokens/s at batch `--batch`, bf16 / fp32 (same greedy requests);
  2. the share of greedy answers (the packaged prompts, unsteered and steered at a boost of 0.4 of
     the residual norm, the middle of the calibration prior) that bf16 leaves token for token
     identical, and where the others first differ (token index);
  3. for each dtype, the share of rows whose tokens in a batch equal the row alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=42)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()

    from esr_eval.sampling.prompts import load_prompts
    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.intervention import Intervention
    from esr_eval.steering.load import load_engine

    prompts = [p.text for p in load_prompts()][: args.prompts]
    engines = {dtype: load_engine(args.model, dtype=dtype) for dtype in ("float32", "bfloat16")}
    fp32 = engines["float32"]
    resid = torch.cat(fp32.prompt_residuals([[{"role": "user", "content": p}] for p in prompts[:8]]))
    norm = float(resid.norm(dim=-1).median())
    width = fp32.dictionary.d_sae

    def requests(steered: bool) -> list[GenerationRequest]:
        out = []
        for i, p in enumerate(prompts):
            k = (97 * i + 13) % width
            boost = 0.4 * norm / float(fp32.dictionary.W_dec[k].norm())
            ivs = (Intervention(k, boost),) if steered else ()
            out.append(GenerationRequest([{"role": "user", "content": p}], ivs, args.tokens, temperature=0.0, seed=i))
        return out

    answers: dict[tuple[str, bool], list[list[int]]] = {}
    made = {dtype: 0 for dtype in engines}
    spent = {dtype: 0.0 for dtype in engines}
    for lm in engines.values():
        lm.generate(requests(False)[:2])  # warm-up
    # interleaved, in alternating order, so a change in the machine's load hits both dtypes alike
    for steered, order in ((False, ("float32", "bfloat16")), (True, ("bfloat16", "float32"))):
        for dtype in order:
            start = time.perf_counter()
            results = engines[dtype].generate(requests(steered), max_batch_size=args.batch)
            spent[dtype] += time.perf_counter() - start
            made[dtype] += sum(r.completion_tokens for r in results)
            answers[dtype, steered] = [r.token_ids for r in results]
    speed = {dtype: made[dtype] / spent[dtype] for dtype in engines}
    print(f"{args.model}, {len(prompts)} prompts x {args.tokens} greedy tokens, batch {args.batch}, torch threads {torch.get_num_threads()}")
    print(f"  fp32 {speed['float32']:.1f} tok/s, bf16 {speed['bfloat16']:.1f} tok/s")
    print(f"bf16 / fp32 tokens/s: {speed['bfloat16'] / speed['float32']:.2f}")
    for steered in (False, True):
        a, b = answers["float32", steered], answers["bfloat16", steered]
        diffs = [first_difference(x, y) for x, y in zip(a, b)]
        differing = [d for d in diffs if d is not None]
        where = f"first differing token: median {statistics.median(differing):.0f}, min {min(differing)}" if differing else "none differ"
        print(f"{'steered  ' if steered else 'unsteered'} greedy answers identical in bf16 and fp32: {diffs.count(None)}/{len(diffs)} ({where})")
    for dtype, lm in engines.items():
        sample = requests(True)[: args.batch]
        alone = [lm.generate([r])[0].token_ids for r in sample]
        same = sum(x == y for x, y in zip(alone, answers[dtype, True][: args.batch]))
        print(f"{dtype}: rows equal alone and in a batch of {args.batch}: {same}/{len(sample)}")


if __name__ == "__main__":
    main()
