"""`esr-eval report LOG_DIR`: comparison tables (markdown + HTML, printed too) and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from esr_eval.cli.common import console


def print_tables(task_tables: dict[str, list[list[str]]], columns: list[str] | None = None, suffix: str = "") -> None:
    from rich.table import Table

    from esr_eval.report.tables import COLUMNS

    screen = console()
    for task, rows in task_tables.items():
        table = Table(title=task + suffix)
        for c in columns or COLUMNS:
            table.add_column(c, justify="right" if c in ("n judged", "latents", "judge errors", "pairs") else "left", overflow="fold")
        for r in rows:
            table.add_row(*r)
        screen.print(table)


def _report(args: argparse.Namespace) -> int:
    from esr_eval.report.tables import write_report

    first = Path(args.logs[0])
    out = args.out or (first if first.is_dir() else first.parent) / "report"
    from esr_eval.report.tables import PAIRED_COLUMNS

    md, plots, task_tables, panels = write_report(args.logs, out, args.scorer)
    print_tables(task_tables)
    print_tables(panels, PAIRED_COLUMNS, ": paired conditions")
    print(f"wrote {md}, {md.with_suffix('.html')} and {len(plots)} plot(s)")
    return 0


def add_report(sub) -> None:
    p = sub.add_parser("report", help="markdown + HTML comparison report and plots over Inspect logs")
    p.add_argument("logs", nargs="+", help="log folder(s) or log file(s)")
    p.add_argument("--out", help="output folder (default: LOG_DIR/report)")
    p.add_argument("--scorer", help="attempts-judge scorer to read (default: the first in the logs)")
    p.set_defaults(func=_report)
