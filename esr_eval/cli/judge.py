"""`esr-eval validate-judge`: measure graders on the labelled judge-validation set (a table and a
confusion plot per grader); `esr-eval train-grader`: retrain the offline grader's restart classifier."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from inspect_ai.util import DisplayType

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esr_eval.cli.common import console
from esr_eval.config import OFFLINE_GRADER

TASK = "esr_eval/judge_validation"
SCORER = "judge_agreement"
NEGATIVES_TASK = "esr_eval/judge_negatives"
NEGATIVES_SCORER = "negatives_judge"
COUNT_NAMES = ("n", "judge_errors", "judge_faults", "n_multi_labelled", "n_multi_judged")  # judge_tools.validation.COUNTS


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def _cell(metrics: dict[str, float], name: str) -> str:
    value = metrics.get(name)
    if value is None or value != value:  # missing or NaN
        return "-"
    if name in COUNT_NAMES:
        return f"{value:g}"
    low, high = metrics.get(f"{name}_ci_low"), metrics.get(f"{name}_ci_high")
    if low is None or low != low:
        return f"{value:.3f}"
    return f"{value:.3f} [{low:.2f}, {high:.2f}]"


@dataclass
class GraderResult:
    name: str  # grader@version where the grader has a version
    metrics: dict[str, float]
    plot: Path
    log: str


def run_validation(
    graders: list[Any],
    split: str = "test",
    data: str | None = None,
    log_dir: str = "logs",
    plot_dir: str | None = None,
    max_connections: int | None = None,
    display: DisplayType = "none",
) -> tuple[list[GraderResult], list[str]]:
    """Run esr_eval/judge_validation once per grader (a model name or an Inspect Model); return
    the finished graders' figures with their confusion plots, and one line per failed eval."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.log import read_eval_log

    from esr_eval.judge_tools.validation import Comparison, confusion_plot
    from esr_eval.judge_tools.validation_set import load_validation_set

    load_validation_set(data, split)  # a bad file or split fails before any model loads
    task_args = {"split": split, **({"data": str(Path(data).resolve())} if data else {})}
    logs = inspect_eval(
        TASK, model=graders, task_args=task_args, log_dir=log_dir, display=display,
        max_connections=max_connections, fail_on_error=False,
    )  # fmt: skip
    failures = [f"{log.eval.model}: {log.status} {log.error.message if log.error else ''}" for log in logs if log.status != "success"]
    results = []
    for log in logs:
        if log.status != "success":
            continue
        full = read_eval_log(log.location)
        scores = [s.scores[SCORER] for s in full.samples or [] if s.scores and SCORER in s.scores]
        metrics = {name: m.value for name, m in full.results.scores[0].metrics.items()} if full.results else {}
        rows = [Comparison.from_value(cast(dict[str, Any], score.value)) for score in scores]
        name = next((str((score.metadata or {}).get("grader_version")) for score in scores), str(log.eval.model))
        plot = Path(plot_dir or log_dir) / f"judge_validation_{_slug(name)}_{split}.png"
        accuracy = metrics.get("count_accuracy", float("nan"))
        confusion_plot(rows, plot, f"{name}, {split} half ({len(rows)} rows): attempt counts right {accuracy:.0%}")
        results.append(GraderResult(name, metrics, plot, full.location))
    return results, failures


def print_results(results: list[GraderResult], split: str, fmt: str = "table") -> None:
    from rich.table import Table

    from esr_eval.judge_tools.validation import COUNTS, FIGURES

    names = [*COUNTS, *FIGURES]
    if fmt == "markdown":
        print("| figure | " + " | ".join(r.name for r in results) + " |")
        print("|---|" + "---|" * len(results))
        for figure in names:
            print(f"| {figure} | " + " | ".join(_cell(r.metrics, figure) for r in results) + " |")
    else:
        table = Table(title=f"judge validation, {split} half (value [95% interval])")
        table.add_column("figure")
        for r in results:
            table.add_column(r.name)
        for figure in names:
            table.add_row(figure, *(_cell(r.metrics, figure) for r in results))
        console().print(table)
    for r in results:
        console().print(f"{r.name}: confusion plot {r.plot}, log {r.log}")


def run_negatives(
    graders: list[Any], split: str = "test", log_dir: str = "logs", max_connections: int | None = None, display: DisplayType = "none"
) -> tuple[dict[str, list[Any]], list[str]]:
    """Run esr_eval/judge_negatives once per grader; return each finished grader's pool figures
    (`esr_eval.judge_tools.negatives.pool_figures`) and one line per failed eval."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.log import read_eval_log

    from esr_eval.judge_tools.negatives import Judged, load_pool, pool_figures

    pool = {n.id: n for n in load_pool(split)}
    logs = inspect_eval(
        NEGATIVES_TASK, model=graders, task_args={"split": split}, log_dir=log_dir, display=display,
        max_connections=max_connections, fail_on_error=False,
    )  # fmt: skip
    failures = [f"{log.eval.model}: {log.status} {log.error.message if log.error else ''}" for log in logs if log.status != "success"]
    figures = {}
    for log in logs:
        if log.status != "success":
            continue
        judged, name = [], str(log.eval.model)
        for sample in read_eval_log(log.location).samples or []:
            score = (sample.scores or {}).get(NEGATIVES_SCORER)
            if score is None:
                continue
            name = str((score.metadata or {}).get("grader_version") or name)
            value, metadata = cast(dict[str, float], score.value), score.metadata or {}
            error = value["judge_error"] > 0
            scores = None if error else [float(a["score"]) for a in metadata["attempts"]]
            judged.append(Judged(pool[str(sample.id)], scores, value["degraded_flag"] > 0))
        figures[name] = pool_figures(judged)
    return figures, failures


def print_negatives(figures: dict[str, list[Any]], split: str, fmt: str = "table") -> None:
    from rich.table import Table

    def cell(e: Any) -> str:
        return "-" if e.n == 0 else f"{e.value:.2%} [{e.low:.2%}, {e.high:.2%}]"

    header = ["group", "n (latents)", "false multi-attempt", "false ESR", "degraded-flag agreement (n read)"]
    for name, rows in figures.items():
        lines = [[g.group, f"{g.n} ({g.n_latents})", cell(g.false_multi), cell(g.false_esr),
                  f"{cell(g.degraded_agreement)} ({g.degraded_agreement.n})"] for g in rows]  # fmt: skip
        title = f"{name}: false alarms on the real-negative pool, {split} latents (value [95% interval, clustered by latent])"
        if fmt == "markdown":
            print(f"{title}\n\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
            for line in lines:
                print("| " + " | ".join(line) + " |")
        else:
            table = Table(title=title)
            for column in header:
                table.add_column(column)
            for line in lines:
                table.add_row(*line)
            console().print(table)


def _validate(args: argparse.Namespace) -> int:
    from esr_eval.errors import UsageError

    if args.negatives:
        figures, failures = run_negatives(args.grader or [OFFLINE_GRADER], args.split, args.log_dir, args.max_connections, args.display)
        for line in failures:
            console().print(f"[red]{line}[/red]")
        if not figures:
            raise UsageError("no grader finished the real-negative pool: see the errors above")
        print_negatives(figures, args.split, args.format)
        return 1 if failures else 0
    results, failures = run_validation(
        args.grader or [OFFLINE_GRADER], args.split, args.data, args.log_dir, args.plot_dir, args.max_connections, args.display
    )
    for line in failures:
        console().print(f"[red]{line}[/red]")
    if not results:
        raise UsageError("no grader finished the validation: see the errors above")
    print_results(results, args.split, args.format)
    return 1 if failures else 0


def add_validate_judge(sub) -> None:
    cmd = sub.add_parser(
        "validate-judge",
        help="score graders on the labelled judge-validation set",
        description="Score graders on the labelled judge-validation set: attempt-count accuracy, multi-attempt "
        "precision / recall / F1, Cohen's kappa, improvement-sign agreement and first-score rank correlation, "
        "with 95%% intervals, and a confusion plot per grader. Exit 1 when a grader's eval did not finish.",
    )
    cmd.add_argument("--grader", action="append", help=f"Inspect model to measure (repeatable; default {OFFLINE_GRADER})")
    cmd.add_argument("--split", default="test", choices=["test", "dev", "all"], help="half of the set or pool (default: test)")
    cmd.add_argument("--negatives", action="store_true",
                     help="measure false alarms on the real-negative pool instead: false multi-attempt and false ESR "
                          "rates per model and boost band, degraded-flag agreement, intervals clustered by latent")  # fmt: skip
    cmd.add_argument("--data", help="a set file in the same format (default: the packaged set)")
    cmd.add_argument("--log-dir", default="logs", help="where the eval logs (and plots) go (default: logs)")
    cmd.add_argument("--plot-dir", help="where the confusion plots go (default: the log dir)")
    cmd.add_argument("--max-connections", type=int, help="concurrent grader calls per model")
    cmd.add_argument("--format", default="table", choices=["table", "markdown"])
    cmd.add_argument("--display", default="none", help="Inspect display: none, plain, rich, full (default: none)")
    cmd.set_defaults(func=_validate)


def _train(args: argparse.Namespace) -> int:
    from esr_eval.files import atomic_write_text
    from esr_eval.judge import scoring
    from esr_eval.judge.restarts import WEIGHTS_PATH
    from esr_eval.judge_tools.restart_training import train, train_attempt_scorer, write

    classifier = train(args.c, args.data)
    out = write(classifier, Path(args.out_dir) / WEIGHTS_PATH.name if args.out_dir else WEIGHTS_PATH)
    record = classifier.record
    console().print(f"restart classifier -> {out}")
    console().print(f"trained on {record['units']['restart']} restart and {record['units']['other']} other units "
                    f"({record['dev_rows']['n']} dev rows + {record['sentence_file']['name']}); "
                    f"grouped cross-validation: {record.get('cv5_grouped')}")  # fmt: skip
    scorer = train_attempt_scorer(set_path=args.data)
    out = Path(args.out_dir) / scoring.WEIGHTS_PATH.name if args.out_dir else scoring.WEIGHTS_PATH
    atomic_write_text(out, scorer.to_json() + "\n")
    console().print(f"attempt scorer -> {out}: {scorer.record['attempts']} dev attempts, "
                    f"cross-validated Spearman with the bands {scorer.record['cv5_spearman']}")  # fmt: skip
    return 0


def add_train_grader(sub) -> None:
    from esr_eval.judge_tools.restart_training import DEFAULT_C

    cmd = sub.add_parser(
        "train-grader",
        help="retrain the offline grader's restart classifier and attempt scorer (dev half only)",
        description="Retrain the offline grader's restart classifier (logistic regression over sentence embeddings) "
        "on the sentence file and the dev half of the judge-validation set, and its attempt scorer (ridge regression "
        "of the dev half's score bands on attempt features). Bump GRADER_VERSION in "
        "esr_eval/judge/offline.py when the shipped weights change.",
    )
    cmd.add_argument("--c", type=float, default=DEFAULT_C, help=f"inverse regularisation (default {DEFAULT_C})")
    cmd.add_argument("--data", help="a set file in the same format (default: the packaged set; its dev half is read)")
    cmd.add_argument("--out-dir", help="folder for the two weight files (default: the packaged ones)")
    cmd.set_defaults(func=_train)
