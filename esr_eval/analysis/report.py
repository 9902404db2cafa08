"""`esr-eval report LOG_DIR`: per-task comparison tables (markdown + HTML) and PNG plots."""

from __future__ import annotations

import argparse
import html
import math
import re
from dataclasses import dataclass
from pathlib import Path

from inspect_ai.log import EvalLog

from esr_eval.analysis.logs import (
    Summary,
    finetune_info,
    latest_per_run,
    read_logs,
    sample_values,
    short_model,
    short_task,
    task_params,
)
from esr_eval.io import atomic_write_text

# Published figures (METHOD.md): Llama-3.3-70B-Instruct, the paper's strongest resister.
PAPER_MODEL = "Llama-3.3-70B (paper)"
PAPER_PARAMS = 70e9
PAPER: dict[str, dict[str, float | str]] = {
    "steering_resistance": {"multi_attempt_rate": 0.074, "esr_rate": 0.038, "n": "~4,500-4,950"},
    "no_steering": {"multi_attempt_rate": 0.0, "n": "13,118", "mean_first_score": "88-92"},
    "meta_prompt": {"multi_attempt_rate": 0.317, "esr_rate": 0.148},
    "detector_ablation": {"multi_attempt_rate": 0.055, "esr_rate": 0.028},
    "random_ablation": {"multi_attempt_rate": 0.079, "esr_rate": 0.042},
    "boost_sweep": {"multi_attempt_rate": 0.027, "n": "peak over levels"},
}
# Parameter counts of the presets (ESR against model size).
PRESET_PARAMS = {
    "smollm2-135m": 135e6,
    "gemma-3-270m": 270e6,
    "gemma-2-2b-it": 2.6e9,
    "gemma-2-9b-it": 9.2e9,
    "llama-3.1-8b-instruct": 8.0e9,
    "llama-3.3-70b-instruct": 70e9,
}
COLUMNS = [
    "model",
    "params",
    "task parameters",
    "n judged",
    "multi-attempt",
    "ESR",
    "ESR w/o degraded",
    "mean first score",
    "judge errors",
    "status",
]


def model_params(log: EvalLog) -> float | None:
    """Parameter count: model args or eval metadata key `n_params`, then presets (a tuned model's
    base), then a size in the name."""
    for source in (log.eval.model_args or {}, log.eval.metadata or {}):
        if source.get("n_params") is not None:
            return float(source["n_params"])
    tuned = finetune_info(log) or {}
    name = str(tuned.get("base_model") or short_model(log.eval.model)).split("/")[-1].lower()  # LoRA merges add none
    if name in PRESET_PARAMS:
        return PRESET_PARAMS[name]
    found = re.search(r"(\d+(?:\.\d+)?)([mb])(?![a-z])", name)
    return float(found.group(1)) * (1e6 if found.group(2) == "m" else 1e9) if found else None


def fmt_params(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


def fmt_rate(p: float, ci: tuple[float, float] | None = None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    text = f"{100 * p:.1f}%"
    if ci and not math.isnan(ci[0]):
        text += f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    return text


def fmt_score(m: float, ci: tuple[float, float] | None = None) -> str:
    if math.isnan(m):
        return "-"
    return f"{m:.1f}" + (f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci and not math.isnan(ci[0]) else "")


@dataclass
class Run:
    """One log: a model on a task with its parameters."""

    log: EvalLog
    summary: Summary

    @property
    def task(self) -> str:
        return short_task(self.log.eval.task)

    @property
    def model(self) -> str:
        return short_model(self.log.eval.model)

    @property
    def model_cell(self) -> str:
        tuned = finetune_info(self.log)
        if not tuned or tuned.get("mixing_ratio") is None:
            return self.model
        return f"{self.model} ({tuned.get('base_model')} + {100 * float(tuned['mixing_ratio']):.0f}% self-correction)"

    def row(self) -> list[str]:
        s, ci = self.summary, self.summary.intervals()
        m = s.metrics()
        return [
            self.model_cell,
            fmt_params(model_params(self.log)),
            task_params(self.log) or "-",
            str(s.n),
            fmt_rate(m["multi_attempt_rate"], ci["multi_attempt_rate"]),
            fmt_rate(m["esr_rate"], ci["esr_rate"]),
            fmt_rate(m["esr_rate_clean"]),
            fmt_score(m["mean_first_score"], ci["mean_first_score"]),
            str(s.judge_errors),
            self.log.status,
        ]


def paper_row(task: str) -> list[str] | None:
    ref = PAPER.get(task)
    if ref is None:
        return None

    def cell(key: str) -> str:
        return fmt_rate(ref[key]) if isinstance(ref.get(key), float) else str(ref.get(key, "-"))

    return [
        PAPER_MODEL,
        fmt_params(PAPER_PARAMS),
        "-",
        str(ref.get("n", "-")),
        cell("multi_attempt_rate"),
        cell("esr_rate"),
        "-",
        str(ref.get("mean_first_score", "-")),
        "-",
        "published",
    ]


def load_runs(paths: list[str], scorer: str | None = None) -> list[Run]:
    logs = latest_per_run(read_logs(paths))
    runs = [Run(log, Summary.of(sample_values(log, scorer))) for log in logs]
    return sorted(runs, key=lambda r: (r.task, model_params(r.log) or math.inf, r.model, task_params(r.log)))


def tables(runs: list[Run]) -> dict[str, list[list[str]]]:
    """Rows per task; the paper's figures come last where they apply."""
    out: dict[str, list[list[str]]] = {}
    for run in runs:
        out.setdefault(run.task, []).append(run.row())
    for task, rows in out.items():
        ref = paper_row(task)
        if ref:
            rows.append(ref)
    return out


def markdown(task_tables: dict[str, list[list[str]]], plots: list[Path]) -> str:
    lines = [
        "# ESR comparison report",
        "",
        "Rates with Wilson 95% intervals; mean first score with a t 95% interval; "
        "rates are over trials without a judge error.",
        "",
    ]
    for task, rows in task_tables.items():
        lines += [f"## {task}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def html_page(task_tables: dict[str, list[list[str]]], plots: list[Path]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ESR comparison report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:720px;display:block;margin:1em 0}</style>",
        "</head><body><h1>ESR comparison report</h1>",
    ]
    for task, rows in task_tables.items():
        parts.append(f"<h2>{esc(task)}</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in COLUMNS) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    parts += [f"<img src='{esc(p.name)}' alt='{esc(p.stem)}'>" for p in plots]
    return "\n".join(parts + ["</body></html>"])


def print_tables(task_tables: dict[str, list[list[str]]]) -> None:
    from rich.table import Table

    from esr_eval.analysis.logs import console

    screen = console()
    for task, rows in task_tables.items():
        table = Table(title=task)
        for c in COLUMNS:
            table.add_column(c, justify="right" if c in ("n judged", "judge errors") else "left", overflow="fold")
        for r in rows:
            table.add_row(*r)
        screen.print(table)


def write_report(paths: list[str], out: str | Path, scorer: str | None = None) -> tuple[Path, list[Path]]:
    from esr_eval.analysis.plots import write_plots

    runs = load_runs(paths, scorer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(runs, out)
    task_tables = tables(runs)
    atomic_write_text(out / "report.html", html_page(task_tables, plots))
    md = atomic_write_text(out / "report.md", markdown(task_tables, plots))
    print_tables(task_tables)
    return md, plots


def _report(args: argparse.Namespace) -> int:
    first = Path(args.logs[0])
    md, plots = write_report(args.logs, args.out or (first if first.is_dir() else first.parent) / "report", args.scorer)
    print(f"wrote {md}, {md.with_suffix('.html')} and {len(plots)} plot(s)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("report", help="markdown + HTML comparison report and plots over Inspect logs")
    p.add_argument("logs", nargs="+", help="log folder(s) or log file(s)")
    p.add_argument("--out", help="output folder (default: LOG_DIR/report)")
    p.add_argument("--scorer", help="attempts-judge scorer to read (default: the first in the logs)")
    p.set_defaults(func=_report)
