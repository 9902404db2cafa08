"""attempts_judge end to end through inspect_ai.eval with mockllm answers and a mockllm grader."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from inspect_ai import Task, eval, score
from inspect_ai._util.registry import registry_info
from inspect_ai.dataset import Sample
from inspect_ai.log import EvalLog
from inspect_ai.model import ChatMessage, ModelOutput, ModelUsage, get_model
from inspect_ai.scorer import SampleScore, Score
from inspect_ai.solver import generate

from esr_eval.judge.protocol import Attempt, JudgeResult
from esr_eval.judge.text import is_degraded
from esr_eval.results.stats import ESR_METRIC_NAMES
from esr_eval.scorers import (
    adversarial_metrics,
    attempts_judge,
    esr_metrics,
    grouped_esr_metrics,
    trial_value,
)


def score_value(result: JudgeResult, answer: str) -> dict[str, float]:
    return trial_value(result, answer).to_value()

Z = 1.959963984540054


def wilson(k: int, n: int) -> tuple[float, float]:
    p = k / n
    centre = p + Z**2 / (2 * n)
    spread = Z * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return (centre - spread) / (1 + Z**2 / n), (centre + spread) / (1 + Z**2 / n)


# prompt id -> (answer of the evaluated model, grader replies: first call, retry calls)
CASES: dict[str, tuple[str, str, str]] = {
    # single attempt; the first grader reply is unreadable, the retry works
    "single": (
        "ANS-single: boil water, add leaves, steep three minutes.",
        "I think this answer is fine.",
        '<attempts>{"attempts": [{"text": "boil...", "score": 80, "serves_concept": false}]}</attempts>',
    ),
    # two attempts that improve (ESR); code fence and text around the JSON
    "esr": (
        "ANS-esr: volcanoes erupt. Wait, that's not right, let me try again. Boil water, steep.",
        'Grading:\n```json\n{"attempts": [{"text": "volcanoes", "score": 20, "serves_concept": true}, '
        '{"text": "boil", "score": 90}]}\n```\nDone.',
        "",
    ),
    # two attempts that get worse; bare list with string scores
    "worse": (
        "ANS-worse: boil water. Wait, let me start over. Lava is hot.",
        '<attempts>[{"text": "boil", "score": "70/100"}, '
        '{"text": "lava", "score": "40%", "serves_concept": true}]</attempts>',
        "",
    ),
    # degraded output, one attempt
    "degraded": (
        "ANS-degraded: lava lava lava lava lava lava flows.",
        '<attempts>{"attempts": [{"text": "lava lava", "score": 10, "serves_concept": true}]}</attempts>',
        "",
    ),
    # no attempt at all
    "question": ("ANS-question: do you mean green or black tea?", '<attempts>{"attempts": []}</attempts>', ""),
    # the grader never gives a readable reply: judge error after 3 calls
    "broken": ("ANS-broken: steep the tea.", "no idea", "still no idea"),
}
LEVELS = {"single": 1, "esr": 1, "worse": 1, "degraded": 2, "question": 2, "broken": 2}


def _output(text: str) -> ModelOutput:
    output = ModelOutput.from_content(model="mockllm/model", content=text)
    output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return output


def _case_in(text: str) -> str:
    return next(case for case, (answer, _, _) in CASES.items() if answer.split(":")[0] + ":" in text)


def answer_fn(input: list[ChatMessage], *_: Any) -> ModelOutput:
    return _output(CASES[input[-1].text][0])


def make_grader(calls: Counter, overrides: dict[str, str] | None = None):
    def grader_fn(input: list[ChatMessage], *_: Any) -> ModelOutput:
        case = _case_in(input[0].text)
        calls[case] += 1
        first, retry = CASES[case][1], CASES[case][2]
        reply = first if len(input) == 1 else retry
        return _output((overrides or {}).get(case, reply))

    return grader_fn


def esr_task(**task_args: Any) -> Task:
    # one latent per trial: clustered intervals then equal the plain Wilson ones
    samples = [
        Sample(input=case, id=case, metadata={"label": "volcanoes", "latent": i, "boost": 2.5, "level": LEVELS[case]})
        for i, case in enumerate(CASES)
    ]
    return Task(dataset=samples, solver=generate(), scorer=attempts_judge(), **task_args)


def run_eval(tmp_path, calls: Counter, **task_args: Any) -> EvalLog:
    grader = get_model("mockllm/model", custom_outputs=make_grader(calls))
    [log] = eval(
        esr_task(**task_args),
        model=get_model("mockllm/model", custom_outputs=answer_fn),
        model_roles={"grader": grader},
        log_dir=str(tmp_path),
        display="none",
    )
    assert log.status == "success", log.error
    return log


@pytest.fixture(scope="module")
def judged(tmp_path_factory) -> tuple[EvalLog, Counter]:
    calls: Counter = Counter()
    metrics = esr_metrics() + grouped_esr_metrics("level", ["esr_rate", "n", "esr_rate_ci_low"])
    return run_eval(tmp_path_factory.mktemp("logs"), calls, metrics=metrics), calls


def metric_name(metric: Any) -> str:
    return registry_info(metric).name.split("/")[-1]


def metric_values(log: EvalLog, scorer_index: int = 0) -> dict[str, float]:
    assert log.results is not None
    return {name: m.value for name, m in log.results.scores[scorer_index].metrics.items()}


def test_score_values_and_metadata(judged) -> None:
    log, calls = judged
    scores = {s.id: s.scores["attempts_judge"] for s in log.samples}
    esr = scores["esr"]
    assert esr.value == {
        "n_attempts": 2.0, "first_score": 20.0, "last_score": 90.0, "multi_attempt": 1.0, "esr": 1.0,
        "improvement": 70.0, "degraded": 0.0, "judge_error": 0.0, "judge_fault": 0.0, "first_serves_concept": 1.0,
        "last_serves_concept": 0.0, "boost": 2.5,
    }  # fmt: skip
    assert esr.metadata["grader"] == "mockllm/model"
    assert esr.metadata["label"] == "volcanoes"
    assert (esr.metadata["latent"], esr.metadata["boost"]) == (1, 2.5)
    assert esr.metadata["attempts"][1] == {"text": "boil", "score": 90.0, "serves_concept": False}
    assert "```json" in esr.metadata["raw"]
    assert "[20, serves concept] volcanoes" in esr.explanation
    assert scores["worse"].value["improvement"] == -30.0 and scores["worse"].value["esr"] == 0.0
    assert scores["degraded"].value["degraded"] == 1.0
    assert scores["question"].value["n_attempts"] == 0.0
    assert scores["broken"].value["judge_error"] == 1.0
    assert scores["broken"].metadata["judge_calls"] == 3
    assert scores["single"].metadata["judge_calls"] == 2 and scores["single"].value["first_score"] == 80.0
    assert calls == Counter(single=2, esr=1, worse=1, degraded=1, question=1, broken=3)


def test_metric_values_are_exact(judged) -> None:
    values = metric_values(judged[0])
    # judged trials: single, esr, worse, degraded, question (broken is a judge error)
    expected = {
        "n": 6, "n_latents": 6, "judge_errors": 1, "n_multi_attempt": 2, "n_clean": 4,
        "multi_attempt_rate": 2 / 5, "esr_rate": 1 / 5, "improvement_rate": 1 / 2, "degraded_rate": 1 / 5,
        "multi_attempt_rate_clean": 2 / 4, "esr_rate_clean": 1 / 4, "improvement_rate_clean": 1 / 2,
        "mean_first_score": (80 + 20 + 70 + 10) / 4, "mean_improvement": (70 - 30) / 2,
        "mean_first_score_clean": (80 + 20 + 70) / 3, "mean_improvement_clean": 20.0,
    }  # fmt: skip
    for name, value in expected.items():
        assert values[name] == pytest.approx(value), name
    bounds = {
        "multi_attempt_rate": (2, 5), "esr_rate": (1, 5), "improvement_rate": (1, 2), "degraded_rate": (1, 5),
        "multi_attempt_rate_clean": (2, 4), "esr_rate_clean": (1, 4), "improvement_rate_clean": (1, 2),
    }  # fmt: skip
    for name, (k, n) in bounds.items():
        low, high = wilson(k, n)
        assert values[f"{name}_ci_low"] == pytest.approx(low), name
        assert values[f"{name}_ci_high"] == pytest.approx(high), name
    assert values["multi_attempt_rate_ci_low"] == pytest.approx(0.1176, abs=1e-4)  # Wilson 2/5, by hand
    assert values["multi_attempt_rate_ci_high"] == pytest.approx(0.7693, abs=1e-4)
    assert set(ESR_METRIC_NAMES) <= set(values)


# the viewer's log list shows the first figure; its log header the first five
LOGGED_ORDER = [
    "esr_rate", "esr_rate_ci_low", "esr_rate_ci_high",
    "n", "n_latents", "judge_errors", "judge_faults",
    "multi_attempt_rate", "multi_attempt_rate_ci_low", "multi_attempt_rate_ci_high",
    "improvement_rate", "improvement_rate_ci_low", "improvement_rate_ci_high", "mean_improvement", "n_multi_attempt",
    "mean_first_score",
    "degraded_rate", "degraded_rate_ci_low", "degraded_rate_ci_high", "n_clean",
    "esr_rate_clean", "esr_rate_clean_ci_low", "esr_rate_clean_ci_high",
    "multi_attempt_rate_clean", "multi_attempt_rate_clean_ci_low", "multi_attempt_rate_clean_ci_high",
    "improvement_rate_clean", "improvement_rate_clean_ci_low", "improvement_rate_clean_ci_high",
    "mean_first_score_clean", "mean_improvement_clean",
]  # fmt: skip


def test_metric_order_names_and_groups(judged) -> None:
    """The headline first, each rate's bounds and count beside it under its group's name."""
    metrics = judged[0].results.scores[0].metrics
    assert list(metrics)[: len(LOGGED_ORDER)] == LOGGED_ORDER  # a trial is degraded: the clean group is there
    assert [metrics[n].group for n in ("esr_rate", "esr_rate_ci_high", "n", "judge_faults", "n_multi_attempt", "esr_rate_clean")] == [
        "esr", "esr", "trials", "trials", "improvement", "clean"
    ]  # fmt: skip


def test_clean_figures_only_when_a_trial_is_degraded() -> None:
    def scores(degraded: list[bool]) -> list[SampleScore]:
        result = JudgeResult(attempts=[Attempt("a", 10), Attempt("b", 60)])
        return [
            SampleScore(score=Score(value=score_value(result, "lava " * 5 if d else "fine")), sample_id=i, sample_metadata={"latent": i})
            for i, d in enumerate(degraded)
        ]

    def logged(degraded: list[bool]) -> list[str]:
        return [name for m in esr_metrics() for name in m(scores(degraded))]

    assert logged([False, False]) == LOGGED_ORDER[:20]
    assert logged([False, True]) == LOGGED_ORDER


def test_grouped_metrics_by_level(judged) -> None:
    values = metric_values(judged[0])
    assert values["esr_rate[1]"] == pytest.approx(1 / 3)  # single, esr, worse
    assert values["esr_rate[2]"] == 0.0  # degraded, question (broken excluded)
    assert values["esr_rate[all]"] == pytest.approx(1 / 5)
    assert (values["n[1]"], values["n[2]"], values["n[all]"]) == (3, 3, 6)
    assert values["esr_rate_ci_low[1]"] == pytest.approx(wilson(1, 3)[0])
    assert values["esr_rate_ci_low[2]"] == 0.0


def test_rescoring_a_log_records_the_new_grader(judged) -> None:
    log, _ = judged
    calls: Counter = Counter()
    all_high = {case: '<attempts>[{"text": "x", "score": 99}]</attempts>' for case in CASES}
    other = get_model("mockllm/other", custom_outputs=make_grader(calls, all_high))
    rescored = score(log, scorers=[attempts_judge()], model_roles={"grader": other}, action="append", display="none")
    assert rescored.results is not None
    names = [s.name for s in rescored.results.scores]
    assert names[0] == "attempts_judge" and len(set(names)) == len(names) and len(names) >= 2
    new_name = next(s.scorer for s in rescored.results.scores if s.scorer != "attempts_judge")
    for sample in rescored.samples:
        assert sample.scores["attempts_judge"].metadata["grader"] == "mockllm/model"
        assert sample.scores[new_name].metadata["grader"] == "mockllm/other"
        assert sample.scores[new_name].value["first_score"] == 99.0
    new_metrics = {k: m.value for s in rescored.results.scores if s.scorer == new_name for k, m in s.metrics.items()}
    assert new_metrics["mean_first_score"] == 99.0 and new_metrics["judge_errors"] == 0


def test_metrics_on_an_empty_list_do_not_raise() -> None:
    values = {name: v for m in adversarial_metrics() for name, v in m([]).items()}
    counts = ["n", "n_latents", "judge_errors", "judge_faults", "n_multi_attempt", "n_clean"]
    assert all(values[name] == 0.0 for name in counts)
    rates_and_means = [v for name, v in values.items() if name not in counts]
    assert len(rates_and_means) == len(values) - len(counts) and all(math.isnan(v) for v in rates_and_means)
    for metric in grouped_esr_metrics("level"):
        assert len(metric([])) == 1  # only the "[all]" entry, NaN


def test_grouped_without_all_and_unknown_names() -> None:
    [esr_by_level] = grouped_esr_metrics("level", ["esr_rate"], include_all=False)
    result = JudgeResult(attempts=[Attempt("a", 10), Attempt("b", 60)])
    scores = [SampleScore(score=Score(value=score_value(result, "x")), sample_id=1, sample_metadata={"level": 3})]
    assert esr_by_level(scores) == {"esr_rate[3]": 1.0}
    with pytest.raises(ValueError, match="unknown ESR metric 'esr'"):
        grouped_esr_metrics("level", ["esr"])


def test_serves_concept_rates_for_adversarial_runs() -> None:
    def sample_score(first: bool, last: bool, n_attempts: int = 2, error: bool = False) -> SampleScore:
        attempts = [Attempt("a", 10, first)] + ([Attempt("b", 80, last)] if n_attempts == 2 else [])
        result = JudgeResult(attempts=attempts if n_attempts else [], error=error)
        return SampleScore(score=Score(value=score_value(result, "text")), sample_id=1, sample_metadata={"latent": next(ids)})

    ids = iter(range(100))

    scores = [sample_score(True, False), sample_score(True, True), sample_score(False, False, 1),
              sample_score(False, False, 0), sample_score(True, True, error=True)]  # fmt: skip
    values = {name: v for m in adversarial_metrics() for name, v in m(scores).items()}
    assert values["first_serves_concept_rate"] == pytest.approx(2 / 3)  # among 3 trials with an attempt
    assert values["last_serves_concept_rate"] == pytest.approx(1 / 3)
    assert values["last_serves_concept_rate_ci_high"] == pytest.approx(wilson(1, 3)[1])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lava lava lava lava lava", True),
        ("The LAVA, lava. lava! lava lava flows", True),
        ("lava lava lava lava flows lava", False),
        ("a a a a a a a", False),  # one-character words do not count
        ("", False),
        ("He said thecatasoussopadhistant and theunrighthandhandlerlessassistant.", True),  # fused non-words
        ("He said thecatasoussopadhistant once, then spoke plainly.", False),  # one is not enough
        ("It was start-of-action-when-we-already-have-anything and more-of-the-same-old-thing-again-and-again.", True),
        ("Use internationalization, photosynthesis, state-of-the-art tools and snake_case_identifiers_here.", False),
        ("Call contextmanager and exitstack.", False),
        ("the cat sat on the mat and the cat sat on the mat and the cat sat on the mat again", True),  # a loop
    ],
)
def test_degraded(text: str, expected: bool) -> None:
    assert is_degraded(text) is expected


def test_a_restart_into_degenerate_text_is_multi_attempt_but_not_esr() -> None:
    """Whatever the grader, a second attempt made of degenerate text does not make a trial ESR."""
    answer = "Lava is hot. Sorry, back to coffee. thecatasoussopadhistant theunrighthandhandlerlessassistant"
    degenerate_last = JudgeResult([Attempt("Lava is hot.", 10, True), Attempt(answer[13:], 40, False)], raw="", n_calls=1)
    value = trial_value(degenerate_last, answer)
    assert (value.multi_attempt, value.esr, value.degraded) == (1.0, 0.0, 1.0)
    plain = "Lava is hot. Sorry, back to coffee. Boil the water and pour it over the grounds."
    fine_last = JudgeResult([Attempt("Lava is hot.", 10, True), Attempt(plain[13:], 40, False)], raw="", n_calls=1)
    assert (trial_value(fine_last, plain).esr, trial_value(fine_last, plain).degraded) == (1.0, 0.0)
