"""`esr-eval make-finetune-data` and `esr-eval finetune`."""

from __future__ import annotations

import argparse

from esr_eval.cli.common import DTYPES
from esr_eval.config import DEFAULT_MODEL_NAME, GENERATION, LoraSettings


def _make_data(args: argparse.Namespace) -> int:
    from esr_eval.errors import UsageError
    from esr_eval.files import atomic_write_jsonl
    from esr_eval.steering.load import load_unsteered_engine
    from esr_eval.training.finetune.data import (
        OFFTOPIC_FILE,
        OffTopicBank,
        make_datasets,
        plan_rows,
        ratio_path,
        training_prompts,
    )

    if not str(args.out).endswith(".jsonl"):
        raise UsageError(f"--out {args.out}: the rows are written as jsonl, name the file *.jsonl")
    ratios = list(dict.fromkeys(args.ratio))
    prompts = training_prompts(args.prompts)
    bank = OffTopicBank.load(args.subjects or OFFTOPIC_FILE)
    for ratio in ratios:
        plan_rows(prompts, args.n, ratio, bank, args.seed)  # validate before loading the model
    engine = load_unsteered_engine(args.model, args.dtype, args.device)
    datasets = make_datasets(
        engine, prompts, args.n, ratios, bank, args.seed, args.max_tokens, args.batch_size, args.temperature, args.writer
    )
    for ratio, rows in datasets.items():
        path = atomic_write_jsonl(ratio_path(args.out, ratio, len(ratios) > 1), rows)
        n_corr = sum(r["kind"] == "correction" for r in rows)
        print(f"wrote {len(rows)} rows ({n_corr} self-correction, ratio {n_corr / len(rows):.3f}) to {path}")
    return 0


def add_make_data(sub) -> None:
    p = sub.add_parser("make-finetune-data", help="write self-correction fine-tuning rows (jsonl)")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="preset, hub id or folder whose own answers are used")
    p.add_argument("--prompts", help="prompt file (.txt, .jsonl or .csv); default: the packaged training prompts")
    p.add_argument("--n", type=int, default=500, help="number of rows")
    p.add_argument(
        "--ratio", type=float, nargs="+", default=[0.5],
        help="share of self-correction rows, floor(n*ratio+0.5); several ratios share one set of answers "
        "and write OUT-rNN.jsonl each",
    )
    p.add_argument("--out", required=True, help="output .jsonl")
    p.add_argument("--writer", help="Inspect model that writes the off-topic passages (default: templates)")
    p.add_argument("--subjects", help="off-topic subjects / recovery lines JSON (default: the packaged bank)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=200, help="answer length budget")
    p.add_argument("--temperature", type=float, default=GENERATION.temperature)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_make_data)


def _finetune(args: argparse.Namespace) -> int:
    from esr_eval.errors import UsageError
    from esr_eval.files import read_jsonl
    from esr_eval.training.finetune.train import load_base, merge_and_save, train_lora

    settings = LoraSettings(
        rank=args.rank,
        alpha=args.alpha,
        dropout=args.dropout,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        micro_batch_size=args.micro_batch_size,
        warmup_steps=args.warmup_steps,
        val_fraction=args.val_fraction,
        max_steps=args.max_steps,
        max_length=args.max_length,
        target_modules=tuple(m for m in args.target_modules.split(",") if m) if args.target_modules else None,
        seed=args.seed,
    )
    settings.check()
    fix = "write it with `esr-eval make-finetune-data`"
    rows = read_jsonl(args.data, "fine-tuning data", fix)
    if not rows:
        raise UsageError(f"{args.data} holds no rows: {fix}")
    bad = next((i for i, r in enumerate(rows, 1) if "segments" not in r or "messages" not in r), None)
    if bad is not None:
        raise UsageError(f"{args.data} line {bad} has no messages and segments: {fix}")
    model, tokenizer, chat_template = load_base(args.model, args.dtype, args.device)
    peft_model, metrics = train_lora(model, tokenizer, rows, settings, chat_template)
    metrics["base_model"] = args.model
    metrics["data"] = str(args.data)
    merge_and_save(peft_model, tokenizer, args.out, metrics)
    for e in metrics["epochs"]:
        val = "n/a" if e["val_loss"] is None else f"{e['val_loss']:.4f}"
        print(f"epoch {e['epoch']}: train loss {e['train_loss']:.4f}, val loss {val} ({e['steps']} steps)")
    print(f"merged model written to {args.out}; evaluate it as steered/{args.out} -M dictionary={args.model}")
    return 0


def add_finetune(sub) -> None:
    d = LoraSettings
    p = sub.add_parser("finetune", help="LoRA-tune a model on self-correction rows and save the merged model")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="preset, hub id or folder to tune")
    p.add_argument("--data", required=True, help="rows from `esr-eval make-finetune-data`")
    p.add_argument("--out", required=True, help="folder for the merged model")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--alpha", type=int, default=d.alpha)
    p.add_argument("--dropout", type=float, default=d.dropout)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="effective batch per optimizer step")
    p.add_argument("--micro-batch-size", type=int, default=d.micro_batch_size, help="rows per forward pass (gradient accumulation)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--target-modules", help="comma-separated module names (default: attention projections)")
    p.add_argument("--max-length", type=int, default=d.max_length, help="tokens per row (longer rows are cut)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_finetune)
