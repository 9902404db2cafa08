"""esr_eval/judge_validation: how well a grader splits and scores steered answers, measured on
the labelled judge-validation set through the same protocol the ESR scorer uses.

The evaluated model is the grader: `inspect eval esr_eval/judge_validation --model GRADER`
(several comma-separated models give one log each, side by side in the viewer). With no
--model, the offline grader is measured; a `grader` model role, when given, wins.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from inspect_ai import Task, task
from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import ChatMessageAssistant, ModelOutput, get_model
from inspect_ai.solver import Generate, Solver, TaskState, solver

from esr_eval.config import GRADER_ROLE, OFFLINE_GRADER
from esr_eval.errors import UsageError, unknown_names
from esr_eval.judge.protocol import grader_identity, judge_answer, rubric_message
from esr_eval.judge_tools.validation_set import (
    SET_PATH,
    ValidationRow,
    load_validation_set,
)
from esr_eval.scorers.judge_validation import JUDGED, judge_agreement, negatives_judge
from esr_eval.tasks.task_setup import task_version


def row_sample(row: ValidationRow) -> Sample:
    return Sample(
        id=row.id,
        input=rubric_message(row.prompt, row.answer, row.label),
        metadata={
            "prompt": row.prompt,
            "label": row.label,
            "answer": row.answer,
            "category": row.category,
            "split": row.split,
            "origin": row.origin,
            "labelled_attempts": row.n_attempts,
            "labelled_improves": row.improves,
            "first_band": row.first_band,
            "labelled_attempt_texts": [a.text(row.answer) for a in row.attempts],
        },
    )


@solver
def judge_with_grader() -> Solver:
    """Ask the grader (role "grader", else the evaluated model) for the row's attempts with
    `judge_answer`, retries included; its last reply becomes the sample's output."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        grader = get_model(role=GRADER_ROLE, default=get_model())
        md = state.metadata
        result = await judge_answer(grader, md["prompt"], md["answer"], md["label"])
        state.store.set(
            JUDGED,
            {
                "attempts": result.attempts_as_dicts(),
                "error": result.error,
                "error_message": result.error_message,
                "raw": result.raw,
                "calls": result.n_calls,
                "grader": str(grader),
                "grader_version": grader_identity(grader),
            },
        )
        state.messages.append(ChatMessageAssistant(content=result.raw or "(empty)"))
        state.output = ModelOutput.from_content(model=str(grader), content=result.raw)
        return state

    return solve


def _model_given() -> bool:
    """False only when `inspect eval` runs with no --model; a Task built in Python outside an eval
    gets its model from `eval(task, model=...)`."""
    try:
        return str(get_model()) != "none/none"
    except ValueError:
        return True


@task
def judge_validation(split: str = "test", data: str | None = None, **unknown: Any) -> Task:
    """Score a grader against the labelled judge-validation set.

    Args:
      split: "test" (the half no grader was built on), "dev" or "all".
      data: a set file in the same format (default: the packaged set).
    """
    unknown_names(unknown, ["split", "data"], "task args for judge_validation")
    rows = load_validation_set(data, str(split))
    path = Path(data) if data else SET_PATH
    default = None if _model_given() else get_model(OFFLINE_GRADER)
    return Task(
        dataset=MemoryDataset([row_sample(r) for r in rows], name=f"judge_validation_{split}"),
        solver=judge_with_grader(),
        scorer=judge_agreement(),
        model=default,
        version=task_version("judge_validation"),
        metadata={
            "split": split,
            "set": path.name,
            "set_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "rows": len(rows),
        },
    )


@task
def judge_negatives(split: str = "test", **unknown: Any) -> Task:
    """A grader's false alarms on the real-negative pool: real answers of the embedded models, steered
    and not, that (but for the few a person labelled otherwise) do not restart.

    Args:
      split: "test" (the latents no grader was tuned on), "dev" or "all".
    """
    from esr_eval.judge_tools.negatives import ANSWERS, load_pool

    unknown_names(unknown, ["split"], "task args for judge_negatives")
    if split not in ("test", "dev", "all"):
        raise UsageError(f"-T split={split!r} is unknown: use test, dev or all")
    pool = load_pool(str(split))
    samples = [
        Sample(
            id=n.id, input=rubric_message(n.prompt, n.answer, n.label),
            metadata={"prompt": n.prompt, "label": n.label, "answer": n.answer, "band": n.band, "split": n.split,
                      "origin": n.origin, "labelled_attempts": n.attempts, "labelled_degraded": n.degraded},
        )  # fmt: skip
        for n in pool
    ]
    default = None if _model_given() else get_model(OFFLINE_GRADER)
    return Task(
        dataset=MemoryDataset(samples, name=f"judge_negatives_{split}"),
        solver=judge_with_grader(),
        scorer=negatives_judge(),
        model=default,
        version=task_version("judge_negatives"),
        metadata={"split": split, "pool_sha256": hashlib.sha256(ANSWERS.read_bytes()).hexdigest(), "rows": len(pool)},
    )
