"""`esr-eval agreement LOG`: how far the judges that scored one log agree, pair by pair.

Re-scoring a log with another grader (`inspect score LOG --scorer ... --action append`) adds a
second attempts-judge scorer to every sample; this compares each pair of them on the samples
both scored without a judge error.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import asdict, dataclass

from inspect_ai.log import EvalLog

from esr_eval.analysis.logs import esr_scorer_names, numeric, read_logs


def cohens_kappa(a: list[int], b: list[int]) -> float:
    """Cohen's kappa of two binary ratings (NaN when chance agreement is total)."""
    n = len(a)
    if n == 0:
        return math.nan
    observed = sum(x == y for x, y in zip(a, b)) / n
    pa, pb = sum(a) / n, sum(b) / n
    expected = pa * pb + (1 - pa) * (1 - pb)
    return math.nan if expected == 1 else (observed - expected) / (1 - expected)


def _correlations(x: list[float], y: list[float]) -> tuple[float, float]:
    from scipy import stats

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return (math.nan, math.nan)
    return (float(stats.pearsonr(x, y)[0]), float(stats.spearmanr(x, y)[0]))


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


@dataclass
class PairAgreement:
    scorer_a: str
    scorer_b: str
    grader_a: str
    grader_b: str
    n: int
    multi_attempt_a: int
    multi_attempt_b: int
    multi_attempt_agreement: float
    multi_attempt_kappa: float
    n_multi_both: int
    improvement_sign_agreement: float
    first_score_pearson: float
    first_score_spearman: float


def _graders(log: EvalLog, scorer: str) -> str:
    names = sorted(
        {
            str((s.scores[scorer].metadata or {}).get("grader", "?"))
            for s in log.samples or []
            if s.scores and scorer in s.scores
        }
    )
    return ", ".join(names) or "?"


def pair_agreement(log: EvalLog, a: str, b: str) -> PairAgreement:
    pairs = []
    for s in log.samples or []:
        scores = s.scores or {}
        if a in scores and b in scores:
            va, vb = numeric(scores[a].value), numeric(scores[b].value)
            if va.get("judge_error", 0) < 0.5 and vb.get("judge_error", 0) < 0.5:
                pairs.append((va, vb))
    ma = [int(va["multi_attempt"] >= 0.5) for va, _ in pairs]
    mb = [int(vb["multi_attempt"] >= 0.5) for _, vb in pairs]
    both = [(va, vb) for (va, vb), x, y in zip(pairs, ma, mb) if x and y]
    sign_same = [_sign(va.get("improvement", 0.0)) == _sign(vb.get("improvement", 0.0)) for va, vb in both]
    pearson, spearman = _correlations([va["first_score"] for va, _ in pairs], [vb["first_score"] for _, vb in pairs])
    n = len(pairs)
    return PairAgreement(
        scorer_a=a,
        scorer_b=b,
        grader_a=_graders(log, a),
        grader_b=_graders(log, b),
        n=n,
        multi_attempt_a=sum(ma),
        multi_attempt_b=sum(mb),
        multi_attempt_agreement=sum(x == y for x, y in zip(ma, mb)) / n if n else math.nan,
        multi_attempt_kappa=cohens_kappa(ma, mb),
        n_multi_both=len(both),
        improvement_sign_agreement=sum(sign_same) / len(both) if both else math.nan,
        first_score_pearson=pearson,
        first_score_spearman=spearman,
    )


def agreements(log: EvalLog) -> list[PairAgreement]:
    names = esr_scorer_names(log.samples or [])
    if len(names) < 2:
        raise ValueError(
            f"{log.location} has {len(names)} attempts-judge scorer(s) ({', '.join(names) or 'none'}): add another "
            "with `inspect score LOG --scorer ... --model-role grader=... --action append`"
        )
    return [pair_agreement(log, a, b) for a, b in itertools.combinations(names, 2)]


def _fmt(x: float, pct: bool = False) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def print_table(results: list[PairAgreement], title: str) -> None:
    from rich.table import Table

    from esr_eval.analysis.logs import console

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
    logs = read_logs([args.log])
    if len(logs) != 1:
        raise ValueError(f"{args.log} holds {len(logs)} logs: pass one log file")
    results = agreements(logs[0])
    if args.json:
        rows = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()} for r in results
        ]
        print(json.dumps(rows, indent=2))
    else:
        print_table(results, f"judge agreement: {logs[0].eval.task} / {logs[0].eval.model}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("agreement", help="pairwise agreement of the attempts judges that scored one log")
    p.add_argument("log", help="one Inspect log file scored by two or more judges")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_agreement)
