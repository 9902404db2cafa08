"""The vLLM backend against the HF backend on the embedded model, measured in one run.

  python benchmarks/vllm_backend.py [--dtype float32] [--batch 16] [--tokens 64] [--base-url URL]

Prints, for the same greedy requests through both backends:
  1. agreement: requests whose tokens are equal (unsteered, add-steered, clamp + add), and the
     max abs difference of the prompt residuals and of the latent read-outs;
  2. each backend's unsteered, steered and clamp tokens/s, steered / unsteered (goal >= 0.9),
     and vLLM / HF on the same requests;
  3. the vLLM engine's start time.
The HF backend is measured before the vLLM engine starts, so vLLM's workers do not share its CPU.
`backend_throughput` and `agreement` are the functions other benchmarks call.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

PROMPTS = [
    "Explain how to brew a good cup of coffee.",
    "How do you change a flat tyre?",
    "Explain how rain forms in clouds.",
    "How do you make pancakes from scratch?",
]


def requests(kind: str, width: int, batch: int, tokens: int) -> list:
    """`batch` greedy requests: "plain", "add" (one latent +40 per row) or "clamp" (that add
    plus a clamp of another latent to 0, as the ablation tasks send)."""
    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.intervention import Intervention

    rows = []
    for i in range(batch):
        messages = [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]
        add = Intervention((97 * i) % width, 40.0)
        steering = {"plain": (), "add": (add,), "clamp": (add, Intervention((31 * i + 5) % width, 0.0, "clamp"))}[kind]
        rows.append(GenerationRequest(messages, steering, tokens, 0.0, seed=i))
    return rows


def backend_throughput(engine, batch: int = 16, tokens: int = 64, repeats: int = 2) -> dict[str, float]:
    """Best-of-`repeats` generated tokens/s of one engine for each kind of request batch."""
    width = engine.dictionary.d_sae
    engine.generate(requests("plain", width, batch, tokens))  # warm-up
    out = {}
    for kind in ("plain", "add", "clamp"):
        rows = requests(kind, width, batch, tokens)
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            made = sum(r.completion_tokens for r in engine.generate(rows))
            best = max(best, made / (time.perf_counter() - start))
        out[kind] = best
    return out


def reference(hf, batch: int, tokens: int) -> dict:
    """What `agreement` compares against, computed while the HF engine has the machine."""
    width = hf.dictionary.d_sae
    answers = {kind: hf.generate(requests(kind, width, batch, tokens)) for kind in ("plain", "add", "clamp")}
    convs = [(r.messages, a.text) for r, a in zip(requests("clamp", width, batch, tokens), answers["clamp"])]
    steering = [list(r.interventions) for r in requests("clamp", width, batch, tokens)]
    return {
        "answers": answers,
        "residuals": hf.prompt_residuals([r.messages for r in requests("plain", width, batch, tokens)]),
        "conversations": convs,
        "steering": steering,
        "latents": hf.read_latents(convs, None, steering),
    }


def agreement(engine, ref: dict, batch: int, tokens: int) -> dict[str, float]:
    """Equal-token shares per request kind and read-out max abs differences against `ref`."""
    width = engine.dictionary.d_sae
    out: dict[str, float] = {}
    for kind, want in ref["answers"].items():
        got = engine.generate(requests(kind, width, batch, tokens))
        out[f"equal_{kind}"] = sum(g.token_ids == w.token_ids for g, w in zip(got, want)) / len(want)
    res = engine.prompt_residuals([r.messages for r in requests("plain", width, batch, tokens)])
    out["residual_max_abs_diff"] = max(float((g - w).abs().max()) for g, w in zip(res, ref["residuals"]))
    out["residual_max_abs"] = max(float(w.abs().max()) for w in ref["residuals"])
    lat = engine.read_latents(ref["conversations"], None, ref["steering"])
    out["latent_max_abs_diff"] = max(float((g - w).abs().max()) for g, w in zip(lat, ref["latents"]))
    out["latent_max_abs"] = max(float(w.abs().max()) for w in ref["latents"])
    return out


def report(name: str, speed: dict[str, float]) -> None:
    print(f"  {name:5s} unsteered {speed['plain']:7.1f} tok/s   add {speed['add']:7.1f}   clamp+add {speed['clamp']:7.1f}"
          f"   add/unsteered {speed['add'] / speed['plain']:.3f}  clamp/unsteered {speed['clamp'] / speed['plain']:.3f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--base-url", default=None, help="a vllm serve endpoint instead of an in-process engine")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of this process (the HF backend); vLLM's workers pick their own")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU build
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from esr_eval.steering.backends.hf import HFEngine
    from esr_eval.steering.backends.vllm import VLLMEngine

    hf = HFEngine.load(args.model, dtype=args.dtype)
    ref = reference(hf, args.batch, args.tokens)
    hf_speed = backend_throughput(hf, args.batch, args.tokens, args.repeats)
    del hf
    start = time.perf_counter()
    engine = VLLMEngine.load(args.model, dtype=args.dtype, base_url=args.base_url, max_num_seqs=args.batch)
    start_s = time.perf_counter() - start
    agree = agreement(engine, ref, args.batch, args.tokens)
    vllm_speed = backend_throughput(engine, args.batch, args.tokens, args.repeats)

    where = args.base_url or "in process"
    print(f"{args.model}, {args.dtype}, batch {args.batch}, {args.tokens} new greedy tokens, vLLM {where}, torch threads {torch.get_num_threads()}")
    print(f"vLLM engine start (load included): {start_s:.1f} s")
    print("agreement with the HF backend (same requests):")
    print(f"  requests with equal tokens: unsteered {agree['equal_plain']:.0%}, add {agree['equal_add']:.0%}, clamp+add {agree['equal_clamp']:.0%}")
    print(f"  prompt residual max abs diff {agree['residual_max_abs_diff']:.2e} (values up to {agree['residual_max_abs']:.1f})")
    print(f"  latent read-out max abs diff {agree['latent_max_abs_diff']:.2e} (values up to {agree['latent_max_abs']:.1f})")
    print("throughput:")
    report("HF", hf_speed)
    report("vLLM", vllm_speed)
    for kind, label in (("plain", "unsteered"), ("add", "add-steered"), ("clamp", "clamp+add")):
        print(f"vLLM / HF tokens/s, {label}: {vllm_speed[kind] / hf_speed[kind]:.2f}")


if __name__ == "__main__":  # vLLM's CPU build starts its workers by spawn, which re-imports __main__
    main()
