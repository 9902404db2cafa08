"""The HF engine's KV cache that grows in place against transformers' `DynamicCache`, in one run.

  python benchmarks/kv_cache.py [--model smollm2-135m] [--batches 1 64] [--tokens 384]

For each batch it prints both caches' unsteered greedy tokens/s (the same requests, best of
`--repeats` turns) and their ratio, then whether 16 greedy float32 answers are the same token for token
with either cache (the growing cache is a speed change only).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from steered_throughput import PROMPTS, rate  # noqa: E402

from esr_eval.steering.backends import hf_cache  # noqa: E402
from esr_eval.steering.engine import GenerationRequest  # noqa: E402
from esr_eval.steering.load import load_engine  # noqa: E402


def dynamic_cache(config):
    from transformers import DynamicCache

    return DynamicCache(config=config)


CACHES = {"growing": hf_cache.growing_cache, "DynamicCache": dynamic_cache}


def requests(batch: int, tokens: int) -> list[GenerationRequest]:
    return [GenerationRequest([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], (), tokens, 0.0, seed=i) for i in range(batch)]


def answers(lm, batch: int, tokens: int, cache: str) -> list[list[int]]:
    hf_cache.growing_cache = CACHES[cache]  # the engine looks the factory up at each prefill
    return [list(r.token_ids) for r in lm.generate(requests(batch, tokens))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--tokens", type=int, default=384, help="new tokens per row (the eval's answer budget)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    lm = load_engine(args.model)
    print(f"{args.model}, {lm.dtype}, greedy, unsteered, {args.tokens} new tokens")
    for batch in args.batches:
        answers(lm, batch, 8, "growing")  # warm-up
        rates = dict.fromkeys(CACHES, 0.0)
        for _ in range(args.repeats):  # the caches take turns, so a machine that slows down mid-run hurts both
            for cache in CACHES:
                rates[cache] = max(rates[cache], rate(lambda: sum(map(len, answers(lm, batch, args.tokens, cache))), 1))
        print(f"  batch {batch}: growing {rates['growing']:.1f} tok/s, DynamicCache {rates['DynamicCache']:.1f} tok/s")
        print(f"growing / DynamicCache tokens/s, batch {batch}: {rates['growing'] / rates['DynamicCache']:.2f}")

    lm32 = load_engine(args.model, dtype="float32")
    batch = min(max(args.batches), 16)  # float32 runs slower; 16 rows still leave the batch at different steps
    same = [a == b for a, b in zip(answers(lm32, batch, args.tokens, "growing"), answers(lm32, batch, args.tokens, "DynamicCache"))]
    print(f"float32 greedy answers identical with either cache, batch {batch}: {sum(same)}/{len(same)}")


if __name__ == "__main__":
    main()
