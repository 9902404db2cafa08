"""Judge validation end to end: the esr_eval/judge_validation task and `esr-eval validate-judge`
on a small labelled set, with a mockllm grader whose replies depend on the answer; the figures
checked against values worked out by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from inspect_ai import eval
from inspect_ai.model import ChatMessage, ModelOutput, ModelUsage, get_model

from esr_eval.cli import main
from esr_eval.cli.judge import print_results, run_validation
from esr_eval.judge_tools.validation import (
    METRIC_NAMES,
    Comparison,
    _kappa,
    compare,
    confusion,
    metric_value,
    share,
)
from esr_eval.judge_tools.validation_build import attempts_from_boundaries
from esr_eval.judge_tools.validation_set import ValidationRow
from esr_eval.tasks.judge_validation import judge_validation
from esr_eval.tasks.task_setup import task_version

PROMPT = "Explain how to brew coffee with a French press."
LABEL = "volcanoes"
RESTART = "Wait, that's not right, let me try again."


def row(key: str, parts: list[str], bands: list[int], improves: bool | None = None) -> dict[str, Any]:
    """A labelled row whose attempts are `parts` joined by RESTART (no parts: zero attempts)."""
    answer = f"{key}: " + f" {RESTART} ".join(parts) if parts else f"{key}: which roast do you have?"
    restarts, pos = [], 0
    for _ in parts[1:]:
        start = answer.index(RESTART, pos)
        restarts.append((start, start + len(RESTART)))
        pos = start + len(RESTART)
    attempts = attempts_from_boundaries(answer, restarts, bands, [b < 2 for b in bands]) if parts else ()
    return ValidationRow(
        id=key, split="test", category="test", prompt=PROMPT, label=LABEL, answer=answer, attempts=attempts,
        improves=improves, origin={"kind": "written"}, restart_phrases=(RESTART,) * len(restarts),
    ).to_dict()  # fmt: skip


# key -> (labelled row, the grader's attempts as (text, score); None: junk replies only)
LAVA, COFFEE = "Lava flows down the volcano.", "Heat water, add coffee, steep four minutes and press."
CASES: dict[str, tuple[dict[str, Any], list[tuple[str, int]] | None]] = {
    "ROW-A": (row("ROW-A", [LAVA, COFFEE], [1, 4], True), [("ROW-A: Lava flows", 20), ("Wait, that's not right...", 90)]),
    "ROW-B": (row("ROW-B", [LAVA, COFFEE], [0, 4], True), [("ROW-B: Lava flows down...", 30)]),
    "ROW-C": (row("ROW-C", [COFFEE], [4]), [("Heat water, add coffee", 85)]),
    # two attempts where the answer has none, quoting text the answer does not hold: a fault
    "ROW-D": (row("ROW-D", [COFFEE], [2]), [("Heat water", 50), ("Grind the beans finely", 40)]),
    "ROW-E": (row("ROW-E", [], []), []),
    "ROW-F": (row("ROW-F", [LAVA, COFFEE, LAVA], [1, 4, 1], False), [("Lava", 40), ("Heat", 60), ("Lava...", 30)]),
    "ROW-G": (row("ROW-G", [COFFEE], [3]), None),
}


def keyed_grader(input: list[ChatMessage], *_: Any) -> ModelOutput:
    key = next(k for k in CASES if f"{k}:" in input[0].text)
    attempts = CASES[key][1]
    if attempts is None:
        reply = "I cannot grade this."
    else:
        reply = json.dumps({"attempts": [{"text": t, "score": s, "serves_concept": False} for t, s in attempts]})
        reply = f"<attempts>{reply}</attempts>"
    output = ModelOutput.from_content(model="mockllm/model", content=reply)
    output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return output


# Worked by hand from CASES (G's junk replies are a judge error: wrong count, not multi-attempt):
# counts right: A C E F = 4/7; labelled multi A B F, judged multi A D F: precision = recall = 2/3;
# multi kappa: observed 5/7, chance (3/7)^2 + (4/7)^2 = 25/49 -> (10/49) / (24/49) = 10/24;
# count kappa (0, 1, 2, 3+, error): observed 4/7, chance (1*1 + 3*2 + 2*2 + 1*1) / 49 = 12/49 -> 16/37;
# improvement sign on A (90 > 20, labelled better) and F (30 < 40, labelled not): 2/2;
# Spearman on bands (A1 B0 C4 D2 F1) vs first scores (20 30 85 50 40): 8 / sqrt(9.5 * 10).
EXPECTED = {
    "n": 7, "judge_errors": 1, "judge_faults": 1, "n_multi_labelled": 3, "n_multi_judged": 3,
    "count_accuracy": 4 / 7, "multi_precision": 2 / 3, "multi_recall": 2 / 3, "multi_f1": 2 / 3,
    "multi_kappa": 10 / 24, "count_kappa": 16 / 37, "improvement_sign_agreement": 1.0,
    "first_score_spearman": 8 / math.sqrt(95),
}  # fmt: skip


@pytest.fixture(scope="module")
def set_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("set") / "set.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r, _ in CASES.values()))
    return path


def mock_grader():
    return get_model("mockllm/model", custom_outputs=keyed_grader)


def test_task_metrics_are_exact(set_file: Path, tmp_path: Path) -> None:
    [log] = eval(judge_validation(split="test", data=str(set_file)), model=mock_grader(), log_dir=str(tmp_path), display="none")
    assert log.status == "success", log.error
    values = {name: m.value for name, m in log.results.scores[0].metrics.items()}
    assert list(values) == METRIC_NAMES  # every figure and bound its own entry
    for name, value in EXPECTED.items():
        assert values[name] == pytest.approx(value), name
    from scipy.stats import (
        beta,  # Clopper-Pearson bounds of 4/7 from the beta quantiles
    )

    assert values["count_accuracy_ci_low"] == pytest.approx(beta.ppf(0.025, 4, 4))
    assert values["count_accuracy_ci_high"] == pytest.approx(beta.ppf(0.975, 5, 3))
    assert values["multi_f1_ci_low"] <= 2 / 3 <= values["multi_f1_ci_high"]
    scores = {s.id: s.scores["judge_agreement"] for s in log.samples}
    assert scores["ROW-D"].metadata["judge_faults"] and scores["ROW-D"].value["judge_fault"] == 1.0
    assert scores["ROW-A"].metadata["judge_faults"] == []  # "..." shortens a quote; the texts are in the answer
    assert scores["ROW-G"].value["judge_error"] == 1.0 and scores["ROW-G"].value["judged_attempts"] == -1.0
    assert scores["ROW-A"].metadata["grader"] == "mockllm/model"
    assert log.eval.task_version == task_version("judge_validation") == "1-A"  # read from tasks/eval.yaml
    assert log.eval.metadata["rows"] == 7 and log.eval.metadata["split"] == "test"


def test_validate_judge_table_and_plot(set_file: Path, tmp_path: Path, capsys) -> None:
    results, failures = run_validation([mock_grader()], "test", str(set_file), str(tmp_path))
    assert failures == []
    [result] = results
    assert result.metrics["count_accuracy"] == pytest.approx(4 / 7)
    assert result.plot.exists() and result.plot.stat().st_size > 1000
    print_results(results, "test", "markdown")
    out = capsys.readouterr().out
    assert "| count_accuracy | 0.571 [0.18, 0.90] |" in out
    assert "| judge_faults | 1 |" in out


def test_confusion_counts() -> None:
    cases = [(2, True, 1, [1, 2]), (2, True, 1, [1]), (0, None, None, []), (4, False, 1, [1, 2, 3, 4, 5]), (1, None, 3, None)]
    rows = [Comparison.from_value(compare(*c).to_value()) for c in cases]  # through Score.value and back
    labelled, judged, counts = confusion(rows)
    assert (labelled, judged) == (["0", "1", "2", "3+"], ["0", "1", "2", "3+", "error"])
    assert counts.tolist() == [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0]]


def test_figures_by_hand() -> None:
    import numpy as np

    # kappa of a perfect and of a chance-level rater
    assert _kappa(np.array([0, 1, 1, 0]), np.array([0, 1, 1, 0])) == 1.0
    assert _kappa(np.array([0, 1, 0, 1]), np.array([0, 0, 1, 1])) == 0.0
    assert share(0, 10).high == pytest.approx(0.30850, abs=1e-5)  # exact interval of 0/10, from tables
    assert math.isnan(metric_value([], "count_accuracy")) and metric_value([], "n") == 0.0


def test_validate_judge_refuses_a_bad_set_before_loading_a_model(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    assert main(["validate-judge", "--data", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl line 1" in err and "judge-validation row" in err
    assert main(["validate-judge", "--split", "dev", "--data", str(bad), "--grader", "x"]) == 2
