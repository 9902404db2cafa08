"""`esr-eval agreement LOG`: pairwise agreement of the attempts judges that scored one log."""

from __future__ import annotations

import argparse
import json
import math

from esr_eval.cli.common import console


def _fmt(x: float, pct: bool = False) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def print_table(results: list, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in [
        "judge A",
        "judge B",
        "n",
        "multi A/B",
        "multi agree",
        "kappa",
        "both multi",
        "impr. sign agree",
        "first Pearson",
        "first Spearman",
    ]:
        table.add_column(col)
    for r in results:
        table.add_row(
            f"{r.scorer_a}\n({r.grader_a})",
            f"{r.scorer_b}\n({r.grader_b})",
            str(r.n),
            f"{r.multi_attempt_a}/{r.multi_attempt_b}",
            _fmt(r.multi_attempt_agreement, True),
            _fmt(r.multi_attempt_kappa),
            str(r.n_multi_both),
            _fmt(r.improvement_sign_agreement, True),
            _fmt(r.first_score_pearson),
            _fmt(r.first_score_spearman),
        )
    console().print(table)


def _agreement(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from esr_eval.analysis.agreement import agreements
    from esr_eval.errors import UsageError
    from esr_eval.results.logs import read_logs

    logs = read_logs([args.log])
    if len(logs) != 1:
        raise UsageError(f"{args.log} holds {len(logs)} logs: pass one log file")
    results = agreements(logs[0])
    if args.json:
        rows = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()} for r in results
        ]
        print(json.dumps(rows, indent=2))
    else:
        print_table(results, f"judge agreement: {logs[0].eval.task} / {logs[0].eval.model}")
    return 0


def add_agreement(sub) -> None:
    p = sub.add_parser("agreement", help="pairwise agreement of the attempts judges that scored one log")
    p.add_argument("log", help="one Inspect log file scored by two or more judges")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_agreement)
