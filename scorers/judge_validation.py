"""`judge_agreement`: compares a grader's attempts with the judge-validation set's labels; thin
`@metric`s over `esr_eval.judge_tools.validation` (one float each, so every figure and each bound is
its own entry in the viewer, and two graders' logs line up side by side)."""

from __future__ import annotations

from collections.abc import Callable

from inspect_ai.scorer import Metric, SampleScore, Score, Scorer, Target, metric, scorer
from inspect_ai.solver import TaskState

from esr_eval.judge.faults import judge_faults
from esr_eval.judge.protocol import Attempt
from esr_eval.judge_tools.validation import (
    METRIC_NAMES,
    Comparison,
    compare,
    metric_description,
    metric_value,
)

JUDGED = "judged"  # TaskState.store key of the grader's reply, written by the task's solver


def comparisons(scores: list[SampleScore]) -> list[Comparison]:
    return [Comparison.from_value(s.score.value) for s in scores if Comparison.is_value(s.score.value)]


def _register(name: str) -> Callable[[], Metric]:
    def factory() -> Metric:
        def compute(scores: list[SampleScore]) -> float:
            return metric_value(comparisons(scores), name)

        return compute

    factory.__name__ = factory.__qualname__ = f"judge_{name}"
    factory.__doc__ = metric_description(name)
    return metric(name=name)(factory)


VALIDATION_METRICS: dict[str, Callable[[], Metric]] = {name: _register(name) for name in METRIC_NAMES}


def validation_metrics() -> list[Metric]:
    return [VALIDATION_METRICS[name]() for name in METRIC_NAMES]


@scorer(metrics=validation_metrics())
def judge_agreement() -> Scorer:
    """The grader's reply (store "judged") against the row's labels (sample metadata)."""

    async def score(state: TaskState, target: Target) -> Score:
        import anyio

        md = state.metadata
        judged = state.store.get(JUDGED)
        if judged is None:
            raise ValueError("no grader reply in the store: judge_agreement scores the esr_eval/judge_validation task")
        attempts = [Attempt(a["text"], a["score"], a["serves_concept"]) for a in judged["attempts"]]
        error = bool(judged["error"])
        faults = [] if error else await anyio.to_thread.run_sync(judge_faults, md["answer"], attempts)
        value = compare(
            md["labelled_attempts"], md["labelled_improves"], md["first_band"],
            None if error else [a.score for a in attempts], bool(faults),
        )  # fmt: skip
        verdict = "error" if error else ("right" if value.judged_attempts == value.labelled_attempts else "wrong")
        lines = [f"labelled {md['labelled_attempts']} attempt(s), judged {'-' if error else len(attempts)} ({verdict})"]
        lines += [f"{i}. [{a.score:g}] {' '.join(a.text.split())[:200]}" for i, a in enumerate(attempts, 1)]
        lines += [f"judge fault: {f}" for f in faults]
        return Score(
            value=value.to_value(),
            answer=judged["raw"],
            explanation="\n".join(lines),
            metadata={
                "grader": judged["grader"],
                "grader_version": judged["grader_version"],
                "attempts": judged["attempts"],
                "judge_faults": faults,
                "judge_error_message": judged.get("error_message"),
                "category": md["category"],
            },
        )

    return score


def _pool_rate(key: str) -> Metric:
    """The share of judged pool answers (judge errors left out) whose value `key` is set."""

    def compute(scores: list[SampleScore]) -> float:
        values = [s.score.value for s in scores if isinstance(s.score.value, dict) and not s.score.value["judge_error"]]
        return sum(v[key] for v in values) / len(values) if values else float("nan")

    return compute


@metric(name="false_multi_attempt_rate")
def false_multi_attempt_rate() -> Metric:
    """Share of judged pool answers split into 2+ attempts that a person labelled as fewer."""
    return _pool_rate("false_multi")


@metric(name="false_esr_rate")
def false_esr_rate() -> Metric:
    """Share of judged pool answers scored as ESR (2+ attempts, last better) that do not restart."""
    return _pool_rate("false_esr")


@scorer(metrics=[false_multi_attempt_rate(), false_esr_rate()])
def negatives_judge() -> Scorer:
    """The grader's reply (store "judged") on a real-negative pool answer: a split where the label
    says one attempt is a false alarm. Clustered intervals come from `esr-eval validate-judge --negatives`."""

    async def score(state: TaskState, target: Target) -> Score:
        from esr_eval.judge.text import is_degraded

        md = state.metadata
        judged = state.store.get(JUDGED)
        if judged is None:
            raise ValueError("no grader reply in the store: negatives_judge scores the esr_eval/judge_negatives task")
        error = bool(judged["error"])
        scores = [float(a["score"]) for a in judged["attempts"]]
        false_multi = not error and len(scores) >= 2 and md["labelled_attempts"] < 2
        value = {
            "judged_attempts": -1.0 if error else float(len(scores)),
            "false_multi": float(false_multi),
            "false_esr": float(false_multi and scores[-1] > scores[0]),
            "judge_error": float(error),
            "degraded_flag": float(is_degraded(md["answer"])),
        }
        lines = [f"labelled {md['labelled_attempts']} attempt(s), judged {'-' if error else len(scores)}"]
        lines += [f"{i}. [{a['score']:g}] {' '.join(a['text'].split())[:200]}" for i, a in enumerate(judged["attempts"], 1)]
        return Score(
            value=value, answer=judged["raw"], explanation="\n".join(lines),
            metadata={"grader": judged["grader"], "grader_version": judged["grader_version"], "attempts": judged["attempts"]},
        )  # fmt: skip

    return score
