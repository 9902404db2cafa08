"""`esr-eval report`: per-task comparison tables (markdown + HTML) and PNG plots."""

from __future__ import annotations

import html
import math
from pathlib import Path

from esr_eval.files import atomic_write_text
from esr_eval.report.paper import PAPER, PAPER_MODEL, PAPER_PARAMS
from esr_eval.report.runs import Run, load_runs, model_params
from esr_eval.results.logs import paired_trials, task_params
from esr_eval.results.stats import Estimate, condition_estimate, paired_difference

COLUMNS = [
    "model",
    "params",
    "task parameters",
    "n judged",
    "latents",
    "multi-attempt",
    "ESR",
    "ESR w/o degraded",
    "mean first score",
    "judge errors",
    "status",
]
INTERVALS_NOTE = (
    "Rates with 95% intervals clustered by latent (Wilson at the effective sample size); mean first "
    "score with a clustered t 95% interval; rates are over trials without a judge error."
)


def fmt_params(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / 1e9:g}B" if n >= 1e9 else f"{n / 1e6:g}M"


def fmt_rate(value: float | Estimate | None) -> str:
    """`12.5% [3.1, 38.0]` for an estimate, `12.5%` for a plain number."""
    p = value.value if isinstance(value, Estimate) else value
    if p is None or math.isnan(p):
        return "-"
    text = f"{100 * p:.1f}%"
    if isinstance(value, Estimate) and not math.isnan(value.low):
        text += f" [{100 * value.low:.1f}, {100 * value.high:.1f}]"
    return text


def fmt_score(e: Estimate) -> str:
    if math.isnan(e.value):
        return "-"
    return f"{e.value:.1f}" + (f" [{e.low:.1f}, {e.high:.1f}]" if not math.isnan(e.low) else "")


def run_row(run: Run) -> list[str]:
    s = run.summary
    return [
        run.model_cell,
        fmt_params(model_params(run.log)),
        task_params(run.log) or "-",
        str(s.count("n_judged")),
        str(s.n_latents),
        fmt_rate(s.rate("multi_attempt_rate")),
        fmt_rate(s.rate("esr_rate")),
        fmt_rate(s.rate("esr_rate_clean").value),
        fmt_score(s.mean("mean_first_score")),
        str(s.count("judge_errors")),
        run.log.status,
    ]


def paper_row(task: str) -> list[str] | None:
    ref = PAPER.get(task)
    if ref is None:
        return None

    def cell(key: str) -> str:
        value = ref.get(key)
        return fmt_rate(value) if isinstance(value, float) else str(value or "-")

    return [
        PAPER_MODEL,
        fmt_params(PAPER_PARAMS),
        "-",
        str(ref.get("n", "-")),
        "-",
        cell("multi_attempt_rate"),
        cell("esr_rate"),
        "-",
        str(ref.get("mean_first_score", "-")),
        "-",
        "published",
    ]


def tables(runs: list[Run]) -> dict[str, list[list[str]]]:
    """Rows per task; the paper's figures come last where they apply."""
    out: dict[str, list[list[str]]] = {}
    for run in runs:
        out.setdefault(run.task, []).append(run_row(run))
    for task, rows in out.items():
        ref = paper_row(task)
        if ref:
            rows.append(ref)
    return out


# the continuation controls: their conditions and the paired comparisons the report shows
PAIRED_PANELS: dict[str, tuple[list[str], list[tuple[str, str]]]] = {
    "prefill_detection": (["plain", "detectors", "random"], [("detectors", "plain"), ("random", "plain"), ("detectors", "random")]),
    "matched_prefix": (["restart", "matched", "off"], [("restart", "matched"), ("restart", "off"), ("matched", "off")]),
}
PAIRED_COLUMNS = ["model", "task parameters", "condition", "pairs", "latents", "restart in continuation", "continuation score"]
PAIRED_NOTE = (
    "Each source answer is continued once per condition with one seed; a difference is the mean over the pairs "
    "judged in both conditions (a minus b), with a t 95% interval clustered by latent."
)


def fmt_points(e: Estimate) -> str:
    """A difference of rates in percentage points."""
    if math.isnan(e.value):
        return "-"
    text = f"{100 * e.value:+.1f} pp"
    return text + (f" [{100 * e.low:+.1f}, {100 * e.high:+.1f}]" if not math.isnan(e.low) else "")


def paired_rows(runs: list[Run]) -> dict[str, list[list[str]]]:
    """Per continuation task: a row per condition, then a row per paired comparison."""
    out: dict[str, list[list[str]]] = {}
    for run in runs:
        if run.task not in PAIRED_PANELS:
            continue
        conditions, comparisons = PAIRED_PANELS[run.task]
        trials = paired_trials(run.log, run.scorer)
        rows = out.setdefault(run.task, [])
        for c in conditions:
            restart = condition_estimate(trials, c, "restart")
            if restart.n:
                score = condition_estimate(trials, c, "continuation_score")
                rows.append([run.model, task_params(run.log) or "-", c, str(restart.n), str(restart.n_clusters), fmt_rate(restart), fmt_score(score)])
        for a, b in comparisons:
            restart = paired_difference(trials, a, b, "restart")
            if restart.n:
                score = paired_difference(trials, a, b, "continuation_score")
                rows.append([run.model, task_params(run.log) or "-", f"{a} - {b}", str(restart.n), str(restart.n_clusters), fmt_points(restart), fmt_score(score)])
    return out


def markdown_paired(panels: dict[str, list[list[str]]]) -> list[str]:
    lines: list[str] = []
    for task, rows in panels.items():
        lines += [f"## {task}: paired conditions", "", PAIRED_NOTE, "", "| " + " | ".join(PAIRED_COLUMNS) + " |", "|" + "---|" * len(PAIRED_COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    return lines


def html_paired(panels: dict[str, list[list[str]]]) -> list[str]:
    esc = html.escape
    parts = []
    for task, rows in panels.items():
        parts.append(f"<h2>{esc(task)}: paired conditions</h2><p>{esc(PAIRED_NOTE)}</p><table><tr>"
                     + "".join(f"<th>{esc(c)}</th>" for c in PAIRED_COLUMNS) + "</tr>")  # fmt: skip
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    return parts


def markdown(task_tables: dict[str, list[list[str]]], plots: list[Path], panels: dict[str, list[list[str]]] | None = None) -> str:
    lines = ["# ESR comparison report", "", INTERVALS_NOTE, ""]
    for task, rows in task_tables.items():
        lines += [f"## {task}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
    lines += markdown_paired(panels or {})
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def html_page(task_tables: dict[str, list[list[str]]], plots: list[Path], panels: dict[str, list[list[str]]] | None = None) -> str:
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ESR comparison report</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:720px;display:block;margin:1em 0}</style>",
        f"</head><body><h1>ESR comparison report</h1><p>{esc(INTERVALS_NOTE)}</p>",
    ]
    for task, rows in task_tables.items():
        parts.append(f"<h2>{esc(task)}</h2><table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in COLUMNS) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    parts += html_paired(panels or {})
    parts += [f"<img src='{esc(p.name)}' alt='{esc(p.stem)}'>" for p in plots]
    return "\n".join(parts + ["</body></html>"])


def write_report(
    paths: list[str], out: str | Path, scorer: str | None = None
) -> tuple[Path, list[Path], dict[str, list[list[str]]], dict[str, list[list[str]]]]:
    """report.md, report.html and the plots in `out`; returns them, the tables and the paired panels."""
    from esr_eval.report.plots import write_plots

    runs = load_runs(paths, scorer)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = write_plots(runs, out)
    task_tables = tables(runs)
    panels = paired_rows(runs)
    atomic_write_text(out / "report.html", html_page(task_tables, plots, panels))
    md = atomic_write_text(out / "report.md", markdown(task_tables, plots, panels))
    return md, plots, task_tables, panels
