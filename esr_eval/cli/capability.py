"""`esr-eval capability`: lm-eval accuracy plain, steered and detector-ablated, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from esr_eval.cli.common import console
from esr_eval.config import DEFAULT_MODEL_NAME, FULL_PRECISION_DTYPE
from esr_eval.config import LM_EVAL_TASK as LOCAL_TASK


def _capability(args: argparse.Namespace) -> int:
    import json

    from rich.table import Table

    from esr_eval.capability.lm_eval_model import (
        SteeredHFLM,
        engine_for,
        evaluate,
        steering_from_args,
        task_manager,
    )
    from esr_eval.files import atomic_write_text

    conditions: list[tuple[str, dict[str, Any]]] = [("plain", {})]
    if args.latent is not None:
        conditions.append((f"steered (latent {args.latent} +{args.value:g})", {"latent": args.latent, "value": args.value}))
    if args.ablate:
        conditions.append((f"ablated ({Path(args.ablate).name})", {"ablate": args.ablate}))
        steering_from_args(ablate=args.ablate)  # a bad file fails before the model loads
    engine = engine_for(args.model, args.dictionary, args.layer, args.labels, args.dtype, len(conditions) > 1)
    manager = task_manager(args.tasks, args.include_path)
    rows: dict[str, Any] = {}
    for name, steer in conditions:
        lm = SteeredHFLM(engine=engine, batch_size=args.batch_size, **steer)
        results = evaluate(lm, args.tasks, args.limit, manager)["results"]
        rows[name] = results
    table = Table(title=f"{args.model}: accuracy by condition (lm-eval)")
    table.add_column("condition")
    for task in args.tasks:
        table.add_column(f"{task} acc", justify="right")
        table.add_column(f"{task} acc_norm", justify="right")
    for name, results in rows.items():
        cells = []
        for task in args.tasks:
            r = results[task]
            for metric in ("acc", "acc_norm"):
                value, err = r.get(f"{metric},none"), r.get(f"{metric}_stderr,none")
                cells.append("-" if value is None else f"{value:.3f} ± {err:.3f}" if isinstance(err, float) else f"{value:.3f}")
        table.add_row(name, *cells)
    console().print(table)
    if args.out:
        atomic_write_text(args.out, json.dumps({"model": args.model, "conditions": rows}, indent=2, default=str))
    return 0


def add_capability(sub) -> None:
    p = sub.add_parser("capability", help="lm-eval accuracy plain vs steered vs detector-ablated, side by side")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="preset, folder or hub id")
    p.add_argument("--dictionary", help="SAE / direction-set folder or preset (default: the model preset's)")
    p.add_argument("--layer", type=int)
    p.add_argument("--labels")
    p.add_argument("--latent", type=int, help="latent to add in the steered condition")
    p.add_argument("--value", type=float, default=8.0, help="boost added to the latent")
    p.add_argument("--ablate", help="detectors JSON whose latents are clamped to 0 in the ablated condition")
    p.add_argument("--tasks", nargs="+", default=[LOCAL_TASK], help="lm-eval task names")
    p.add_argument("--include-path", help=f"extra lm-eval task folder (default: the packaged {LOCAL_TASK})")
    p.add_argument("--limit", type=int, help="questions per task")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default=FULL_PRECISION_DTYPE, choices=["float32", "bfloat16"])
    p.add_argument("--out", help="write the lm-eval results of every condition to this JSON file")
    p.set_defaults(func=_capability)
