"""`esr-eval gate LOG [LOG...] --expect "esr_rate <= 0.05"`: a CI regression gate over Inspect logs.

`inspect eval` exits 0 even when a run failed before scoring, so CI reads the log. Each LOG is a
log file or a folder of logs. Metrics are recomputed from the per-sample attempts-judge scores,
with the scorer's metric names: n (scored trials), judge_errors, multi_attempt_rate, esr_rate,
improvement_rate, mean_first_score, mean_improvement, degraded_rate (also n_judged,
n_multi_attempt, n_esr, n_clean, multi_attempt_rate_clean, esr_rate_clean); rates leave out
judge errors. Any other name (e.g. esr_rate_ci_high) is read from log.results as `metric` or
`scorer/metric`.

With --baseline (a log, a log folder, or JSON {"n": N, "multi_attempt": K, "esr": K} with counts
or rates), the multi-attempt and ESR counts are tested against the baseline's (two-sided
two-proportion z-test, or Fisher's exact test); p < alpha is a significant change.

In a folder, only the newest log of each (task, model, task args) is gated, so an eval set's
successful retry supersedes its failed attempt.

Exit codes (the most severe failure wins, in this order):
  2  usage or bad input (unparsable --expect, unreadable baseline, no logs)
  3  a log's status is not "success"
  4  a metric named in --expect is missing (or NaN) in a log
  1  a bound is breached or a change against the baseline is significant
  0  every check passed
"""

from __future__ import annotations

import argparse
import json
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path

from inspect_ai.log import EvalLog

from esr_eval.analysis.logs import Summary, latest_per_run, log_paths, sample_values, short_model, short_task

EXIT_PASS, EXIT_BREACH, EXIT_USAGE, EXIT_NOT_SUCCESS, EXIT_MISSING = 0, 1, 2, 3, 4
SEVERITY = [EXIT_USAGE, EXIT_NOT_SUCCESS, EXIT_MISSING, EXIT_BREACH, EXIT_PASS]
OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq, "!=": operator.ne}
EXPECT = re.compile(
    r"^\s*([A-Za-z_][\w./\[\]-]*)\s*(<=|>=|==|!=|<|>)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Expectation:
    metric: str
    op: str
    bound: float

    @classmethod
    def parse(cls, text: str) -> Expectation:
        m = EXPECT.match(text)
        if not m:
            raise ValueError(f'cannot read --expect {text!r}: write METRIC OP NUMBER, e.g. "esr_rate <= 0.05"')
        return cls(m.group(1), m.group(2), float(m.group(3)))

    def holds(self, value: float) -> bool:
        return OPS[self.op](value, self.bound)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


@dataclass
class Check:
    log: str
    check: str
    value: str
    result: str  # "pass" or a failure kind
    code: int


def log_metrics(log: EvalLog, scorer: str | None = None) -> dict[str, float]:
    """log.results metrics (as `metric` and `scorer/metric`), overridden by the recomputed ones."""
    metrics: dict[str, float] = {}
    for score in (log.results.scores if log.results else []) or []:
        for name, metric in score.metrics.items():
            metrics[f"{score.name}/{name}"] = float(metric.value)
            metrics.setdefault(name, float(metric.value))
    values = sample_values(log, scorer)
    recomputed = Summary.of(values).metrics()
    if not values:  # nothing to recompute from: only the counts are known
        recomputed = {k: v for k, v in recomputed.items() if k in ("n", "judge_errors")}
    metrics.update(recomputed)
    return metrics


def baseline_counts(source: str, scorer: str | None = None) -> tuple[int, int, int]:
    """(n, multi-attempt count, ESR count) of a baseline log/folder or JSON file."""
    path = Path(source)
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "n" in data:
            n = int(data["n"])

            def count(key: str) -> int:
                return int(data[key]) if key in data else round(float(data[f"{key}_rate"]) * n)

            try:
                return n, count("multi_attempt"), count("esr")
            except KeyError as err:
                raise ValueError(
                    f"baseline {source} lacks {err}: give multi_attempt and esr (counts) or *_rate"
                ) from err
    from inspect_ai.log import read_eval_log

    s = Summary()
    for f in log_paths([source]):
        s_one = Summary.of(sample_values(read_eval_log(f), scorer))
        s.n, s.multi_attempt, s.esr = s.n + s_one.n, s.multi_attempt + s_one.multi_attempt, s.esr + s_one.esr
    if s.n == 0:
        raise ValueError(f"baseline {source} has no attempts-judge scores: pass a scored log or a counts JSON")
    return s.n, s.multi_attempt, s.esr


def change_p_value(k1: int, n1: int, k2: int, n2: int, test: str = "z") -> float:
    """Two-sided p-value that the proportions k1/n1 and k2/n2 differ."""
    from scipy import stats

    if n1 == 0 or n2 == 0:
        return math.nan
    if test == "fisher":
        return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]]).pvalue)
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / se
    return float(2 * stats.norm.sf(abs(z)))


def gate_log(
    path: str,
    log: EvalLog,
    expects: list[Expectation],
    baseline: tuple[int, int, int] | None,
    alpha: float,
    test: str,
    scorer: str | None,
) -> list[Check]:
    name = f"{Path(path).name}\n{short_task(log.eval.task)} / {short_model(log.eval.model)}"
    if log.status != "success":
        error = (log.error.message.splitlines() or [""])[0][:80] if log.error else ""
        return [Check(name, "status == success", f"{log.status} {error}".strip(), "not successful", EXIT_NOT_SUCCESS)]
    checks = [Check(name, "status == success", log.status, "pass", EXIT_PASS)]
    metrics = log_metrics(log, scorer)
    for e in expects:
        value = metrics.get(e.metric)
        if value is None or math.isnan(value):
            checks.append(Check(name, str(e), "missing", "metric missing", EXIT_MISSING))
        else:
            ok = e.holds(value)
            checks.append(
                Check(
                    name, str(e), f"{value:.4g}", "pass" if ok else "bound breached", EXIT_PASS if ok else EXIT_BREACH
                )
            )
    if baseline is not None:
        s = Summary.of(sample_values(log, scorer))
        n0, m0, e0 = baseline
        for label, k, k0 in (("multi_attempt", s.multi_attempt, m0), ("esr", s.esr, e0)):
            p = change_p_value(k, s.n, k0, n0, test)
            value = f"{k}/{s.n} vs {k0}/{n0}, p={p:.3g}"
            if math.isnan(p):
                checks.append(Check(name, f"{label} unchanged", value, "metric missing", EXIT_MISSING))
            else:
                significant = p < alpha
                checks.append(
                    Check(
                        name,
                        f"{label} unchanged ({test}, alpha {alpha:g})",
                        value,
                        "significant change" if significant else "pass",
                        EXIT_BREACH if significant else EXIT_PASS,
                    )
                )
    return checks


def gated_files(paths: list[str]) -> list[str]:
    """Files named directly, and from each folder the newest log of every (task, model, task args)
    (an eval set's retried runs supersede their failed attempts; a newer failure is never hidden)."""
    from inspect_ai.log import read_eval_log

    files: list[str] = []
    for p in paths:
        found = log_paths([p])
        if Path(p).is_dir():
            headers = [read_eval_log(f, header_only=True) for f in found]
            found = [log.location for log in latest_per_run(headers, prefer_success=False)]
        files += found
    return files


def run_gate(
    logs: list[str],
    expects: list[str],
    baseline: str | None = None,
    alpha: float = 0.05,
    test: str = "z",
    scorer: str | None = None,
) -> tuple[int, list[Check]]:
    from inspect_ai.log import read_eval_log

    parsed = [Expectation.parse(e) for e in expects]
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha {alpha} is outside (0, 1): use e.g. 0.05")
    if not parsed and baseline is None:
        raise ValueError("nothing to check: give at least one --expect or a --baseline")
    base = baseline_counts(baseline, scorer) if baseline else None
    files = gated_files(logs)
    if not files:
        raise FileNotFoundError(f"no Inspect logs in {', '.join(logs)}: run `inspect eval ... --log-dir DIR` first")
    checks = [c for f in files for c in gate_log(f, read_eval_log(f), parsed, base, alpha, test, scorer)]
    codes = {c.code for c in checks}
    return next(code for code in SEVERITY if code in codes or code == EXIT_PASS), checks


def print_checks(checks: list[Check], code: int) -> None:
    from rich.table import Table

    from esr_eval.analysis.logs import console

    table = Table(title=f"esr-eval gate: {'PASS' if code == 0 else f'FAIL (exit {code})'}")
    for col in ("log", "check", "value", "result"):
        table.add_column(col)
    for c in checks:
        style = "green" if c.code == EXIT_PASS else "red"
        table.add_row(c.log, c.check, c.value, f"[{style}]{c.result}[/{style}]")
    console().print(table)


def _gate(args: argparse.Namespace) -> int:
    code, checks = run_gate(args.logs, args.expect, args.baseline, args.alpha, args.test, args.scorer)
    print_checks(checks, code)
    return code


def register(sub) -> None:
    p = sub.add_parser(
        "gate",
        help="CI gate: fail on unsuccessful logs, breached bounds or significant change",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("logs", nargs="+", help="Inspect log file(s) or folder(s)")
    p.add_argument(
        "--expect",
        action="append",
        default=[],
        metavar="'METRIC OP NUMBER'",
        help='a bound, e.g. "esr_rate <= 0.05" (repeatable)',
    )
    p.add_argument("--baseline", help="baseline log, log folder or counts JSON")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level for the baseline test")
    p.add_argument("--test", choices=["z", "fisher"], default="z", help="two-proportion z-test or Fisher exact")
    p.add_argument("--scorer", help="attempts-judge scorer to read (default: the first in each log)")
    p.set_defaults(func=_gate)
