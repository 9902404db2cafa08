"""`esr-eval gate LOG [LOG...] --expect "esr_rate <= 0.05"`: a CI regression gate over Inspect logs.

`inspect eval` exits 0 even when a run failed before scoring, so CI reads the log. Each LOG is a
log file or a folder of logs. Figures are recomputed from the per-sample attempts-judge scores,
with the scorer's metric names: n (scored trials), n_latents, judge_errors, judge_faults,
multi_attempt_rate, esr_rate, improvement_rate, mean_first_score, mean_improvement,
degraded_rate, their *_clean forms and their *_ci_low / *_ci_high bounds (clustered by latent),
n_judged, n_multi_attempt, n_esr, n_clean. Any other name is read from log.results as `metric`
or `scorer/metric`.

With --baseline (a log, a log folder, or JSON {"n": N, "multi_attempt": K, "esr": K} with counts
or rates), the multi-attempt and ESR counts are tested against the baseline's (two-sided
two-proportion z-test, or Fisher's exact test); p < alpha is a significant change.

With --exceeds OTHER (the same forms), the multi-attempt and ESR counts must be significantly
higher than OTHER's (one-sided test, p < alpha), e.g. a positive control against its base model:
the gate then fails when the harness stops telling a resisting model from one that does not.

In a folder, only the newest log of each run (task, model, model args, task args, grader) is
gated or used as baseline: an eval set's retry supersedes its failed attempt, and a newer
failure is never hidden behind an older success.

Exit codes (the most severe failure wins, in this order):
  5  the gate crashed (a traceback is printed): no verdict
  2  usage or bad input (unparsable --expect, unreadable or unsuccessful baseline, no logs)
  3  a log's status is not "success"
  4  a metric named in --expect is missing (or NaN) in a log
  1  a bound is breached or a change against the baseline is significant
  0  every check passed
"""

from __future__ import annotations

import argparse

from esr_eval.cli.common import console


def _gate(args: argparse.Namespace) -> int:
    from rich.table import Table

    from esr_eval.gate.gate import EXIT_PASS, run_gate

    code, checks = run_gate(args.logs, args.expect, args.baseline, args.alpha, args.test, args.scorer, args.exceeds)
    table = Table(title=f"esr-eval gate: {'PASS' if code == 0 else f'FAIL (exit {code})'}")
    for col in ("log", "check", "value", "result"):
        table.add_column(col)
    for c in checks:
        style = "green" if c.code == EXIT_PASS else "red"
        table.add_row(c.log, c.check, c.value, f"[{style}]{c.result}[/{style}]")
    console().print(table)
    return code


def add_gate(sub) -> None:
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
    p.add_argument("--exceeds", help="log, log folder or counts JSON whose rates these logs must significantly exceed")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the baseline and --exceeds tests")
    p.add_argument("--test", choices=["z", "fisher"], default="z", help="two-proportion z-test or Fisher exact")
    p.add_argument("--scorer", help="attempts-judge scorer to read (default: the first in each log)")
    p.set_defaults(func=_gate)
