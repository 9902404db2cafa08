"""Real Inspect runs with canned answers and canned attempts-judge scores, for the analysis tests."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.log import EvalLog
from inspect_ai.model import ModelOutput
from inspect_ai.scorer import Score, scorer
from inspect_ai.solver import solver

from esr_eval.schema import TrialValue


def esr_value(
    first: float, last: float | None = None, n_attempts: int | None = None, **extra: float
) -> dict[str, float]:
    """A Score.value as the attempts judge writes it (the trial record's own constructor)."""
    last = first if last is None else last
    n_attempts = (1 if last == first else 2) if n_attempts is None else n_attempts
    scores = [first] + [last] * (n_attempts - 1) if n_attempts else []
    if extra.get("judge_error"):
        return TrialValue.failed(bool(extra.get("degraded"))).to_value()
    value = TrialValue.from_scores(scores, [False] * len(scores), degraded=bool(extra.pop("degraded", 0)))
    return replace(value, **{k: float(v) for k, v in extra.items()}).to_value()


@solver
def canned_answer(fail: bool = False):
    async def solve(state, generate):
        if fail:
            raise RuntimeError("canned failure")
        state.output = ModelOutput.from_content("mockllm/model", state.metadata.get("answer", "An answer."))
        state.messages.append(state.output.message)
        return state

    return solve


def canned_judge(name: str, scores: dict[Any, dict[str, Any]]):
    """A scorer named `name` that returns the canned value (and attempts) of each sample id."""

    def factory():
        async def score(state, target):
            canned = scores[state.sample_id]
            return Score(
                value=canned["value"],
                explanation=" | ".join(a["text"] for a in canned.get("attempts", [])),
                metadata={
                    "grader": canned.get("grader", f"grader-{name}"),
                    "attempts": canned.get("attempts", []),
                    **{k: state.metadata[k] for k in ("latent", "boost") if k in state.metadata},
                },
            )

        return score

    return scorer(metrics=[], name=name)(factory)()


def run_canned(
    log_dir: Path,
    rows: list[dict[str, Any]],
    task: str = "steering_resistance",
    model: str = "mockllm/smollm2-135m",
    task_args: dict[str, Any] | None = None,
    fail: bool = False,
    task_metadata: dict[str, Any] | None = None,
) -> EvalLog:
    """rows: {"answer", "metadata", "scores": {scorer_name: {"value", "attempts", "grader"}}}."""
    samples = [
        Sample(
            id=i + 1,
            input=row.get("input", "Explain how bread is baked."),
            metadata={"answer": row.get("answer", "An answer."), **row.get("metadata", {})},
        )
        for i, row in enumerate(rows)
    ]
    names = list(rows[0]["scores"]) if rows else ["judge"]
    scorers = [canned_judge(n, {i + 1: row["scores"][n] for i, row in enumerate(rows)}) for n in names]
    t = Task(name=task, dataset=samples, solver=canned_answer(fail), scorer=scorers, metadata=task_metadata)
    log = eval(t, model=model, log_dir=str(log_dir), display="none")[0]
    if task_args:  # a Task object takes no -T args; record them as a registry task would
        from inspect_ai.log import read_eval_log, write_eval_log

        log = read_eval_log(log.location)
        log.eval.task_args = log.eval.task_args_passed = dict(task_args)
        write_eval_log(log, log.location)
    return log
