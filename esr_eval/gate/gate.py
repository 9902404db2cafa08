"""The CI gate over Inspect logs: status, bounds on ESR figures, and change against a baseline
(the command and its exit codes: `esr_eval.cli.gate`)."""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass
from pathlib import Path

from inspect_ai.log import EvalLog

from esr_eval.errors import MissingFileError, UsageError
from esr_eval.results.logs import (
    log_trials,
    newest_log_files,
    read_log,
    short_model,
    short_task,
)
from esr_eval.results.stats import Summary, all_metric_names

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
            raise UsageError(f'cannot read --expect {text!r}: write METRIC OP NUMBER, e.g. "esr_rate <= 0.05"')
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
    trials = log_trials(log, scorer)
    if trials:
        metrics.update(Summary(trials).metrics(all_metric_names()))
    else:  # nothing to recompute from: only the counts are known
        metrics.update(n=0.0, judge_errors=0.0)
    return metrics


def baseline_counts(source: str, scorer: str | None = None) -> tuple[int, int, int]:
    """(judged trials, multi-attempt count, ESR count) of a baseline: a counts JSON, a log, or a
    folder whose newest log of every run counts (an eval set's failed attempts that were retried
    do not); a baseline run that did not succeed is an error."""
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
                raise UsageError(f"baseline {source} lacks {err}: give multi_attempt and esr (counts) or *_rate") from None
    n = multi = esr = 0
    for f in newest_log_files([source]):
        log = read_log(f)
        if log.status != "success":
            raise UsageError(f"baseline log {f} has status {log.status}: rerun it, or point --baseline at a successful run")
        s = Summary(log_trials(log, scorer))
        n, multi, esr = n + s.count("n_judged"), multi + s.count("n_multi_attempt"), esr + s.count("n_esr")
    if n == 0:
        raise UsageError(f"baseline {source} has no attempts-judge scores: pass a scored log or a counts JSON")
    return n, multi, esr


def change_p_value(k1: int, n1: int, k2: int, n2: int, test: str = "z", greater: bool = False) -> float:
    """p-value that the proportions k1/n1 and k2/n2 differ (two-sided), or, with `greater`, that
    k1/n1 is the larger (one-sided)."""
    from scipy import stats

    if n1 == 0 or n2 == 0:
        return math.nan
    if test == "fisher":
        return float(stats.fisher_exact([[k1, n1 - k1], [k2, n2 - k2]], alternative="greater" if greater else "two-sided").pvalue)
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0  # both all 0 or all 1: no difference
    z = (k1 / n1 - k2 / n2) / se
    return float(stats.norm.sf(z) if greater else 2 * stats.norm.sf(abs(z)))


def gate_log(
    path: str,
    log: EvalLog,
    expects: list[Expectation],
    baseline: tuple[int, int, int] | None,
    alpha: float,
    test: str,
    scorer: str | None,
    exceeds: tuple[int, int, int] | None = None,
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
    if baseline is not None or exceeds is not None:
        summary = Summary(log_trials(log, scorer))
        if baseline is not None:
            checks += count_checks(name, summary, baseline, alpha, test, greater=False)
        if exceeds is not None:
            checks += count_checks(name, summary, exceeds, alpha, test, greater=True)
    return checks


def count_checks(
    name: str, summary: Summary, other: tuple[int, int, int], alpha: float, test: str, greater: bool
) -> list[Check]:
    """The multi-attempt and ESR counts against another run's: unchanged (two-sided, `greater`
    False: a significant change breaches) or above it (one-sided: not significantly above breaches)."""
    n, n0, (m0, e0) = summary.count("n_judged"), other[0], other[1:]
    checks = []
    for label, k, k0 in (("multi_attempt", summary.count("n_multi_attempt"), m0), ("esr", summary.count("n_esr"), e0)):
        p = change_p_value(k, n, k0, n0, test, greater=greater)
        value = f"{k}/{n} vs {k0}/{n0}, p={p:.3g}"
        what = f"{label} above the other run" if greater else f"{label} unchanged"
        if math.isnan(p):
            checks.append(Check(name, what, value, "metric missing", EXIT_MISSING))
            continue
        significant = p < alpha
        if greater:
            check = Check(name, f"{what} ({test}, one-sided, alpha {alpha:g})", value,
                          "pass" if significant else "not significantly above", EXIT_PASS if significant else EXIT_BREACH)
        else:
            check = Check(name, f"{what} ({test}, alpha {alpha:g})", value,
                          "significant change" if significant else "pass", EXIT_BREACH if significant else EXIT_PASS)
        checks.append(check)
    return checks


def check_metric_names(expects: list[Expectation], logs: list[EvalLog]) -> None:
    """A metric no ESR scorer writes and no log holds is a typo (exit 2), not a missing value (4)."""
    import difflib

    known = {"n", "judge_errors", *all_metric_names()}
    in_logs = {
        key
        for log in logs
        for score in (log.results.scores if log.results else []) or []
        for name in score.metrics
        for key in (name, f"{score.name}/{name}")
    }
    for e in expects:
        if e.metric not in in_logs and e.metric.split("/")[-1] not in known:
            close = difflib.get_close_matches(e.metric.split("/")[-1], sorted(known), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            names = sorted(k for k in known if not k.endswith(("_ci_low", "_ci_high")))
            raise UsageError(
                f"--expect {e}: no metric is called {e.metric!r}; {hint}known are {', '.join(names)} "
                "(each rate and mean also has _ci_low and _ci_high; prefix SCORER/ to pick a scorer)"
            )


def run_gate(
    logs: list[str],
    expects: list[str],
    baseline: str | None = None,
    alpha: float = 0.05,
    test: str = "z",
    scorer: str | None = None,
    exceeds: str | None = None,
) -> tuple[int, list[Check]]:
    parsed = [Expectation.parse(e) for e in expects]
    if not 0 < alpha < 1:
        raise UsageError(f"--alpha {alpha} is outside (0, 1): use e.g. 0.05")
    if not parsed and baseline is None and exceeds is None:
        raise UsageError("nothing to check: give at least one --expect, a --baseline or --exceeds")
    base = baseline_counts(baseline, scorer) if baseline else None
    other = baseline_counts(exceeds, scorer) if exceeds else None
    files = newest_log_files(logs)
    if not files:
        raise MissingFileError(f"no Inspect logs in {', '.join(logs)}: run `inspect eval ... --log-dir DIR` first")
    read = [(f, read_log(f)) for f in files]
    check_metric_names(parsed, [log for _, log in read])
    checks = [c for f, log in read for c in gate_log(f, log, parsed, base, alpha, test, scorer, other)]
    codes = {c.code for c in checks}
    return next(code for code in SEVERITY if code in codes or code == EXIT_PASS), checks
