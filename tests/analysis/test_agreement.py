"""Cross-judge agreement: exact pairwise figures from a log re-scored by a second judge."""

from __future__ import annotations

import json

import pytest
from helpers import canned_judge, esr_value, run_canned

from esr_eval.analysis.agreement import agreements, cohens_kappa
from esr_eval.cli import main

# judge A: multi-attempt on trials 1, 2, 5; judge B: on 1, 5, 6. Both multi on 1 (+50 vs +20) and
# 5 (-10 vs +5): one improvement sign agrees out of two. Trial 7 is a judge error under B.
A = [
    esr_value(30, 80),
    esr_value(40, 45),
    esr_value(50),
    esr_value(60),
    esr_value(70, 60),
    esr_value(80),
    esr_value(10),
]
B = [
    esr_value(35, 55),
    esr_value(45),
    esr_value(40),
    esr_value(70),
    esr_value(65, 70),
    esr_value(90, 95),
    esr_value(0, judge_error=1),
]


@pytest.fixture(scope="module")
def rescored(tmp_path_factory):
    """A log scored by judge A, then re-scored by judge B with `score(..., action="append")`."""
    from inspect_ai import score
    from inspect_ai.log import write_eval_log

    d = tmp_path_factory.mktemp("agree")
    log = run_canned(d, [{"scores": {"judge": {"value": v, "grader": "openai/gpt-4o-mini"}}} for v in A])
    second = canned_judge("judge", {i + 1: {"value": v, "grader": "offline"} for i, v in enumerate(B)})
    log = score(log, second, action="append", display="none")
    write_eval_log(log, log.location)
    return log


def test_kappa():
    assert cohens_kappa([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0
    assert cohens_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == -1.0
    assert cohens_kappa([1, 1, 1], [1, 1, 1]) != cohens_kappa([1, 1, 1], [1, 1, 1])  # NaN: chance agreement total


def test_pairwise_figures(rescored):
    (pair,) = agreements(rescored)
    assert pair.scorer_a == "judge" and pair.scorer_b != "judge"  # the appended scorer got a suffix
    assert (pair.grader_a, pair.grader_b) == ("openai/gpt-4o-mini", "offline")
    assert pair.n == 6
    assert (pair.multi_attempt_a, pair.multi_attempt_b) == (3, 3)
    assert pair.multi_attempt_agreement == pytest.approx(4 / 6)
    assert pair.multi_attempt_kappa == pytest.approx(1 / 3)  # po 2/3, pe 1/2
    assert pair.n_multi_both == 2
    assert pair.improvement_sign_agreement == pytest.approx(0.5)
    # first scores A 30..80, B 35,45,40,70,65,90: rank differences 0,1,1,1,1,0 -> rho = 1 - 6*4/210
    assert pair.first_score_spearman == pytest.approx(1 - 24 / 210)
    from scipy.stats import pearsonr

    assert pair.first_score_pearson == pytest.approx(pearsonr([30, 40, 50, 60, 70, 80], [35, 45, 40, 70, 65, 90])[0])


def test_three_judges_make_three_pairs(tmp_path):
    rows = [
        {
            "scores": {
                "a": {"value": esr_value(10 * i)},
                "b": {"value": esr_value(10 * i + 1)},
                "c": {"value": esr_value(50, 60 + i)},
            }
        }
        for i in range(1, 5)
    ]
    log = run_canned(tmp_path, rows)
    pairs = {(p.scorer_a, p.scorer_b): p for p in agreements(log)}
    assert sorted(pairs) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert pairs[("a", "b")].multi_attempt_agreement == 1.0 and pairs[("a", "b")].first_score_pearson == pytest.approx(
        1.0
    )
    assert pairs[("a", "c")].multi_attempt_agreement == 0.0 and pairs[("a", "c")].multi_attempt_kappa == 0.0
    assert pairs[("a", "c")].first_score_pearson != pairs[("a", "c")].first_score_pearson  # constant: NaN


def test_cli_json_and_errors(rescored, tmp_path, capsys):
    assert main(["agreement", rescored.location, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["n"] == 6 and rows[0]["multi_attempt_kappa"] == pytest.approx(1 / 3)
    assert main(["agreement", rescored.location]) == 0
    assert "judge agreement" in capsys.readouterr().out
    single = run_canned(tmp_path, [{"scores": {"judge": {"value": v}}} for v in A[:2]])
    assert main(["agreement", single.location]) == 2
