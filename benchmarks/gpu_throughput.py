"""Throughput of the steering engine on random-weight Llama models: needs only torch and transformers.

  PYTHONPATH=. python benchmarks/gpu_throughput.py [--shapes smollm2-135m,llama-1b] [--out FILE]
  PYTHONPATH=. python benchmarks/gpu_throughput.py --device cpu --shapes tiny --batches 1,4   # a smoke run

No download, no Inspect, no sae-lens: it builds a Llama with a given shape and random weights, a
word-level tokenizer, and a random dictionary of unit directions, and imports only the engine
modules (`esr_eval.steering`). For each shape and batch size it prints, one figure per line:
steered / unsteered tokens/s with every row steered (goal >= 0.9), the engine against Hugging
Face `generate` on the same rows (greedy, same dtype), and the peak accelerator memory.
The end-of-sequence token can never win (its output row is zero), so every row makes exactly
`--tokens` tokens in both engines.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass

import torch

SHAPES = {  # hidden, intermediate, layers, heads, kv heads, vocab
    "smollm2-135m": (576, 1536, 30, 9, 3, 49152),
    "llama-1b": (2048, 8192, 16, 32, 8, 128256),  # Llama-3.2-1B
    "tiny": (64, 128, 2, 4, 2, 512),
}
EOS, PAD = 1, 0
DICTIONARY_WIDTH = 4096
STEER_VALUE = 8.0


@dataclass
class Bench:
    lm: object  # HFEngine
    model: torch.nn.Module
    tokenizer: object
    prompts: list[list[int]]
    texts: list[str]


def build(shape: str, device: str, dtype: torch.dtype, prompt_tokens: int, rows: int) -> Bench:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from esr_eval.steering.backends.hf import HFEngine
    from esr_eval.steering.dictionary import DirectionSet

    hidden, inter, layers, heads, kv, vocab = SHAPES[shape]
    words = {"<pad>": PAD, "</s>": EOS, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab)}}  # special names match no word
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=2, eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    with torch.no_grad():
        model.lm_head.weight[EOS] = 0  # EOS scores 0 and never wins greedy: every row runs its full budget
    layer = layers * 3 // 5
    directions = torch.nn.functional.normalize(torch.randn(DICTIONARY_WIDTH, hidden), dim=-1)
    lm = HFEngine(model, tokenizer, DirectionSet(directions, "random", layer, {}), name=f"random-{shape}", chat_template=False)
    gen = torch.Generator().manual_seed(0)
    texts = [" ".join(f"w{t}" for t in torch.randint(3, vocab, (prompt_tokens,), generator=gen).tolist()) for _ in range(rows)]
    prompts = [lm.prompt_ids([{"role": "user", "content": t}]) for t in texts]
    if any(len(p) != prompt_tokens or 2 in p for p in prompts):
        raise SystemExit(f"the word-level tokenizer did not give {prompt_tokens} known tokens per prompt")
    return Bench(lm, model, tokenizer, prompts, texts)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_rate(fn, device: str, repeats: int) -> tuple[float, int]:
    """(best tokens/s over `repeats` runs, tokens per run)."""
    best, made = 0.0, 0
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        made = fn()
        sync(device)
        best = max(best, made / (time.perf_counter() - start))
    return best, made


def hf_generate(bench: Bench, batch: int, tokens: int):
    device = bench.model.get_input_embeddings().weight.device
    rows = bench.prompts[:batch]
    width = max(len(r) for r in rows)
    ids = torch.tensor([[PAD] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)

    def run() -> int:
        with torch.inference_mode():
            out = bench.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens,
                                       do_sample=False, pad_token_id=PAD, eos_token_id=EOS)  # fmt: skip
        return int(out[:, width:].numel())

    return run


def engine_answers(bench: Bench, batch: int, tokens: int, steered: bool) -> list:
    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.intervention import Intervention

    requests = [GenerationRequest([{"role": "user", "content": bench.texts[i]}],
                                  (Intervention((97 * i) % DICTIONARY_WIDTH, STEER_VALUE),) if steered else (),
                                  tokens, 0.0, top_p=1.0, repetition_penalty=1.0, seed=i)
                for i in range(batch)]  # fmt: skip
    return bench.lm.generate(requests)


def engine(bench: Bench, batch: int, tokens: int, steered: bool):
    return lambda: sum(r.completion_tokens for r in engine_answers(bench, batch, tokens, steered))


def measure(shape: str, args: argparse.Namespace, emit) -> None:
    dtype = getattr(torch, args.dtype)
    on_gpu = args.device.startswith("cuda")
    if on_gpu:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    bench = build(shape, args.device, dtype, args.prompt_tokens, max(args.batches))
    params = sum(p.numel() for p in bench.model.parameters()) / 1e6
    emit(f"model {shape}: random Llama, {params:.1f}M parameters, {args.dtype} on {args.device}; prompts {len(bench.prompts[0])} tokens, {args.tokens} new tokens per row")
    check = min(4, max(args.batches))  # steering must change the answers, or the ratio measures nothing
    plain, steered = (engine_answers(bench, check, args.tokens, s) for s in (False, True))
    changed = sum(a.token_ids != b.token_ids for a, b in zip(plain, steered))
    emit(f"  {shape}: steering changed {changed} of {check} greedy answers")
    for batch in args.batches:
        hf, plain, steered = hf_generate(bench, batch, args.tokens), engine(bench, batch, args.tokens, False), engine(bench, batch, args.tokens, True)
        for warm in (hf, plain, steered):  # first calls compile kernels and grow allocator pools
            warm()
        hf_rate, hf_made = best_rate(hf, args.device, args.repeats)
        plain_rate, plain_made = best_rate(plain, args.device, args.repeats)
        steered_rate, steered_made = best_rate(steered, args.device, args.repeats)
        if not hf_made == plain_made == steered_made == batch * args.tokens:
            emit(f"  warning: tokens made differ: HF {hf_made}, engine {plain_made}, steered {steered_made}")
        emit(f"  {shape} batch {batch}: HF generate {hf_rate:.0f} tok/s, engine unsteered {plain_rate:.0f} tok/s, steered {steered_rate:.0f} tok/s")
        emit(f"{shape} batch {batch} steered / unsteered tokens/s: {steered_rate / plain_rate:.2f}  (goal >= 0.9)", f"{shape}.b{batch}.steered_over_unsteered", steered_rate / plain_rate)
        emit(f"{shape} batch {batch} engine / HF generate tokens/s: {plain_rate / hf_rate:.2f}  (goal >= 0.5)", f"{shape}.b{batch}.engine_over_hf", plain_rate / hf_rate)
    if on_gpu:
        peak = torch.cuda.max_memory_allocated() / 2**30
        emit(f"{shape} peak GPU memory (torch.cuda.max_memory_allocated): {peak:.2f} GiB", f"{shape}.peak_gpu_gib", peak)
    del bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shapes", default="smollm2-135m,llama-1b", help=f"comma-separated, of {', '.join(SHAPES)}")
    parser.add_argument("--batches", default="1,16,64,256", help="comma-separated batch sizes")
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per row")
    parser.add_argument("--prompt-tokens", type=int, default=30)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per figure; the best counts")
    parser.add_argument("--out", help="also write the figures as JSON to this file")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    shapes = args.shapes.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape {', '.join(unknown)}: use {', '.join(SHAPES)}")
    lines: list[str] = []
    figures: dict[str, float | str] = {}

    def emit(line: str, key: str | None = None, value: float | None = None) -> None:
        print(line, flush=True)
        lines.append(line)
        if key is not None:
            figures[key] = round(value, 4)

    start = time.perf_counter()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
    emit(f"device: {name}; torch {torch.__version__}")
    for shape in shapes:
        measure(shape, args, emit)
    emit(f"benchmark wall time: {time.perf_counter() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"device": name, "args": {k: v for k, v in vars(args).items() if k != "out"}, "figures": figures, "lines": lines}, fh, indent=2)


if __name__ == "__main__":
    main()
