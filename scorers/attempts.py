"""`attempts_judge`: the ESR scorer. A grader model (role "grader") splits the steered answer
into attempts and scores each; `Score.value` holds the trial record (`schema.TrialValue`) and the
sample's boost (a column of the viewer's samples list; readers of the record ignore it)."""

from __future__ import annotations

from dataclasses import replace

import anyio
from inspect_ai.model import get_model
from inspect_ai.scorer import Score, Scorer, Target, scorer
from inspect_ai.solver import TaskState

from esr_eval.analysis.boundaries import continuation_attempts
from esr_eval.config import GRADER_ROLE, OFFLINE_GRADER
from esr_eval.judge.faults import judge_faults
from esr_eval.judge.protocol import JudgeResult, grader_identity, judge_answer
from esr_eval.judge.text import is_degraded
from esr_eval.schema import SampleMetadata, TrialValue
from esr_eval.scorers.metrics import esr_metrics

COPIED_METADATA = ("latent", "boost")
# a continuation of a prefix (sample metadata "prefix", "judged"): the judge reads the prefix and the
# continuation as one answer and only the continuation's attempts count, or the continuation alone
JUDGED_ANSWER, JUDGED_CONTINUATION = "answer", "continuation"


def trial_value(result: JudgeResult, answer: str, faults: list[str] | None = None) -> TrialValue:
    """The trial record of a judged answer; `faults` (from `judge_faults`) flag a reply that
    contradicts the answer."""
    degraded = is_degraded(answer)
    if result.error:
        return TrialValue.failed(degraded)
    attempts = result.attempts
    last_degenerate = len(attempts) >= 2 and is_degraded(attempts[-1].text)
    return TrialValue.from_scores(
        [a.score for a in attempts], [a.serves_concept for a in attempts], degraded, bool(faults), last_degenerate
    )


def explanation(result: JudgeResult, grader: str, max_chars: int = 300) -> str:
    if result.error:
        return f"judge error after {result.n_calls} calls to {grader}: {result.error_message}"
    if not result.attempts:
        return f"no attempt ({grader})"
    lines = [f"{len(result.attempts)} attempt(s), graded by {grader}:"]
    for i, attempt in enumerate(result.attempts, 1):
        text = " ".join(attempt.text.split())
        text = text if len(text) <= max_chars else text[: max_chars - 3] + "..."
        concept = ", serves concept" if attempt.serves_concept else ""
        lines.append(f"{i}. [{attempt.score:g}{concept}] {text}")
    return "\n".join(lines)


@scorer(metrics=esr_metrics())
def attempts_judge(grader: str | None = None) -> Scorer:
    """Judge the answer's attempts against the pushed concept (sample metadata "label").

    A sample that continues a prefix (metadata "prefix") is judged as the prefix followed by the
    continuation, and its trial counts only the attempt the continuation begins in and those that
    start after the prefix (a restart inside the prefix is not the continuation's); with metadata
    "judged" = "continuation" the continuation alone is judged.

    Args:
      grader: Grader model used when no `grader` model role is given
        (default: the offline grader `esr_judge/minilm`, never the evaluated model).
    """

    async def score(state: TaskState, target: Target) -> Score:
        md = SampleMetadata.from_metadata(state.metadata)
        label = md.label
        if label is None:
            raise ValueError("sample metadata has no 'label': the attempts judge needs the steered concept's label")
        model = get_model(role=GRADER_ROLE, default=grader or OFFLINE_GRADER)
        written = state.output.completion
        prefix, judged = md.prefix, md.judged or JUDGED_ANSWER
        answer = written if prefix is None or judged == JUDGED_CONTINUATION else prefix + written
        prompt = md.prompt if md.prompt is not None else state.input_text  # without any meta-prompt suffix
        result = await judge_answer(model, prompt, answer, str(label))
        # the restart count may embed the answer: off the event loop
        faults = [] if result.error else await anyio.to_thread.run_sync(judge_faults, answer, result.attempts)
        counted, extra = result, {}
        if prefix is not None and judged == JUDGED_ANSWER and not result.error:
            kept, in_prefix = continuation_attempts(answer, result.attempts_as_dicts(), len(prefix))
            counted = replace(result, attempts=[result.attempts[i] for i in kept])
            extra = {"attempts_in_prefix": float(in_prefix)}
        grader_name = str(model)
        metadata = {
            "grader": grader_name,
            "grader_version": grader_identity(model),  # name@version where the grader has one
            "judge_faults": faults,
            "raw": result.raw,
            "attempts": result.attempts_as_dicts(),
            **({"counted_attempts": counted.attempts_as_dicts()} if counted is not result else {}),
            "label": label,
            "judge_calls": result.n_calls,
            "scores_clipped": result.clipped,
            **{k: getattr(md, k) for k in COPIED_METADATA if getattr(md, k) is not None},
        }
        if result.error_message:
            metadata["judge_error_message"] = result.error_message
        value: dict[str, float] = trial_value(counted, written, faults).to_value() | extra
        if md.boost is not None:  # beside the trial record, for the viewer's samples list
            value["boost"] = float(md.boost)
        return Score(
            value=value,
            answer=answer,
            explanation=explanation(result, grader_name) + "".join(f"\njudge fault: {f}" for f in faults),
            metadata=metadata,
        )

    return score
