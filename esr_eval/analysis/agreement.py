"""`esr-eval agreement LOG`: how far the judges that scored one log agree, pair by pair.

Re-scoring a log with another grader (`inspect score LOG --scorer ... --action append --overwrite`) adds a
second attempts-judge scorer to every sample; this compares each pair of them on the samples
both scored without a judge error.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from inspect_ai.log import EvalLog

from esr_eval.errors import UsageError
from esr_eval.results.logs import esr_scorer_names
from esr_eval.schema import TrialValue


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
            value_a, value_b = scores[a].value, scores[b].value
            if not (TrialValue.is_value(value_a) and TrialValue.is_value(value_b)):
                continue
            va, vb = TrialValue.from_value(value_a), TrialValue.from_value(value_b)
            if va.judged and vb.judged:
                pairs.append((va, vb))
    ma = [int(va.multi_attempt >= 0.5) for va, _ in pairs]
    mb = [int(vb.multi_attempt >= 0.5) for _, vb in pairs]
    both = [(va, vb) for (va, vb), x, y in zip(pairs, ma, mb) if x and y]
    sign_same = [_sign(va.improvement) == _sign(vb.improvement) for va, vb in both]
    pearson, spearman = _correlations([va.first_score for va, _ in pairs], [vb.first_score for _, vb in pairs])
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
        raise UsageError(
            f"{log.location} has {len(names)} attempts-judge scorer(s) ({', '.join(names) or 'none'}): add another "
            "with `inspect score LOG --scorer esr_eval/attempts_judge --model-role grader=... --action append --overwrite`"
        )
    return [pair_agreement(log, a, b) for a, b in itertools.combinations(names, 2)]
