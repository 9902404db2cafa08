"""`esr-eval find-detectors`: off-topic detector discovery, a detectors file and a histogram."""

from __future__ import annotations

import argparse
from pathlib import Path

from esr_eval.cli.common import add_model_args, console, engine_from
from esr_eval.config import DISCOVERY_PROMPTS
from esr_eval.detectors import RULES


def _find_detectors(args: argparse.Namespace) -> int:
    from rich.table import Table

    from esr_eval.detectors.discovery import (
        detectors_file,
        discover,
        plot_auc_histogram,
        unsteered_answers,
    )
    from esr_eval.errors import UsageError
    from esr_eval.sampling.prompts import prompt_set_name, prompt_texts
    from esr_eval.schema import PromptSetRecord

    prompts = prompt_texts(args.prompts)
    record = PromptSetRecord.of(prompt_set_name(args.prompts), prompts)
    lm = engine_from(args)
    if lm.dictionary is None:
        raise UsageError("find-detectors needs a dictionary: use a preset or --dictionary")
    answers = unsteered_answers(lm, prompts, args.max_tokens, args.seed)
    chosen, rows, auc, frequency = discover(lm, prompts, answers, args.seed, args.rule, args.min_auc)
    out = detectors_file(args.model, lm, args.rule, chosen, rows, frequency, record).write(args.out)
    plot = plot_auc_histogram(auc, chosen, Path(args.out).with_suffix(".png"))
    table = Table(title=f"{len(chosen)} detectors ({args.rule} rule) -> {out}, {plot}")
    for col in ("latent", "AUC", "Cohen's d", "active mismatched", "active matched", "label"):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: -r.auc)[: max(10, len(chosen))]:
        mark = "*" if r.latent in chosen else ""
        table.add_row(f"{r.latent}{mark}", f"{r.auc:.3f}", f"{r.cohens_d:.2f}", f"{r.active_mismatched:.2f}", f"{r.active_matched:.2f}", r.label or "")
    console().print(table)
    return 0


def add_find_detectors(sub) -> None:
    cmd = sub.add_parser("find-detectors", help="discover off-topic detector latents (derangement of answers)")
    add_model_args(cmd)
    cmd.add_argument(
        "--prompts",
        default=DISCOVERY_PROMPTS,
        help="discovery prompts: a file or a shipped set's name (default: %(default)s, so the ablation tasks' default "
        "explain_how prompts are held out; an ablation run on any discovery prompt is refused)",
    )
    cmd.add_argument("--max-tokens", type=int, default=256)
    cmd.add_argument("--rule", default="strict", choices=RULES, help="strict (0 on matched, >= 80%% of mismatched) or auc")
    cmd.add_argument("--min-auc", type=float, default=0.95)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--out", default="detectors.json", help="detectors JSON (a histogram PNG is written beside it)")
    cmd.set_defaults(func=_find_detectors)
