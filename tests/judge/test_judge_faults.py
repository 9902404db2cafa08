"""Judge faults: grader replies that contradict the answer are flagged in the score's metadata
and counted by the judge_faults metric, without dropping the trial."""

from __future__ import annotations

from typing import Any

import pytest
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.model import ChatMessage, ModelOutput, ModelUsage, get_model
from inspect_ai.solver import generate

from esr_eval.judge.faults import judge_faults, text_faults
from esr_eval.judge.protocol import Attempt
from esr_eval.scorers import attempts_judge

ANSWER = (
    "Lava is hot and glows red. Wait, that is not right, let me try again. "
    "Heat water to just below boiling, then pour it over the grounds and steep for four minutes."
)


@pytest.mark.parametrize(
    ("texts", "fault"),
    [
        (["Lava is hot and glows red.", "Wait, that is not right, let me try again. Heat water..."], None),
        (["lava is HOT  and glows red", "wait, that is not right ... Heat water to just below boil..."], None),  # case, spaces, cut words
        (["Lava is hot", "Heat water to just below boiling, then pour it over the ground and steep"], None),  # one word changed
        (["Lava is hot", "Volcanoes erupt every spring"], "attempt 2 quotes text that is not in the answer"),
        (["Heat water to just below boiling", "Lava is hot"], "attempt 2 quotes text from before the previous attempt"),
        (["Lava is hot... the grounds", "Grind the beans"], "attempt 2 quotes text that is not in the answer"),
    ],
)
def test_attempt_texts_must_come_from_the_answer_in_order(texts: list[str], fault: str | None) -> None:
    faults = text_faults(ANSWER, [Attempt(t, 50) for t in texts])
    assert (faults[0].split(":")[0] if faults else None) == fault


def test_more_attempts_than_restart_sentences_is_a_fault() -> None:
    two = [Attempt("Lava is hot and glows red.", 10), Attempt("Wait, that is not right, let me try again.", 80)]
    assert judge_faults(ANSWER, two) == []
    three = [*two[:1], Attempt("Wait, that is not right", 50), Attempt("Heat water to just below boiling", 80)]
    assert judge_faults(ANSWER, three) == ["3 attempts but 1 restart sentence(s) in the answer"]
    elaboration = "Boil water. Pour it over the grounds. Then press the plunger and serve."
    split_at_elaboration = [Attempt("Boil water.", 60), Attempt("Pour it over the grounds.", 70)]
    assert judge_faults(elaboration, split_at_elaboration) == ["2 attempts but 0 restart sentence(s) in the answer"]


def _output(text: str) -> ModelOutput:
    output = ModelOutput.from_content(model="mockllm/model", content=text)
    output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return output


REPLIES = {  # answer key -> the grader's reply
    "FINE": '<attempts>{"attempts": [{"text": "FINE Lava is hot.", "score": 10}, '
    '{"text": "Wait, that is not right, let me try again. Boil water.", "score": 80}]}</attempts>',
    "INVENTED": '<attempts>{"attempts": [{"text": "Volcanoes erupt", "score": 10}, {"text": "Boil", "score": 80}]}</attempts>',
    "SPLIT": '<attempts>{"attempts": [{"text": "SPLIT Boil water.", "score": 60}, {"text": "Pour it.", "score": 70}]}</attempts>',
}
ANSWERS = {
    "FINE": "FINE Lava is hot. Wait, that is not right, let me try again. Boil water.",
    "INVENTED": "INVENTED Lava is hot. Wait, that is not right, let me try again. Boil water.",
    "SPLIT": "SPLIT Boil water. Pour it. Serve it.",
}


def test_attempts_judge_flags_and_counts_faults(tmp_path) -> None:
    def answer(input: list[ChatMessage], *_: Any) -> ModelOutput:
        return _output(ANSWERS[input[-1].text])

    def grader(input: list[ChatMessage], *_: Any) -> ModelOutput:
        return _output(next(reply for key, reply in REPLIES.items() if f"{key} " in input[0].text))

    task = Task(
        dataset=[Sample(input=k, id=k, metadata={"label": "volcanoes", "latent": i}) for i, k in enumerate(ANSWERS)],
        solver=generate(),
        scorer=attempts_judge(),
    )
    [log] = eval(
        task, model=get_model("mockllm/model", custom_outputs=answer),
        model_roles={"grader": get_model("mockllm/model", custom_outputs=grader)}, log_dir=str(tmp_path), display="none",
    )  # fmt: skip
    assert log.status == "success", log.error
    scores = {s.id: s.scores["attempts_judge"] for s in log.samples}
    assert scores["FINE"].metadata["judge_faults"] == [] and scores["FINE"].value["judge_fault"] == 0.0
    assert scores["INVENTED"].metadata["judge_faults"][0].startswith("attempt 1 quotes text that is not in the answer")
    assert scores["SPLIT"].metadata["judge_faults"] == ["2 attempts but 0 restart sentence(s) in the answer"]
    assert "judge fault: 2 attempts but 0" in scores["SPLIT"].explanation
    # a faulty trial is still a judged trial: it stays in the rates and is counted apart
    assert scores["SPLIT"].value["judge_fault"] == 1.0 and scores["SPLIT"].value["multi_attempt"] == 1.0
    metrics = {name: m.value for name, m in log.results.scores[0].metrics.items()}
    assert (metrics["judge_faults"], metrics["judge_errors"], metrics["n"]) == (2, 0, 3)
    assert metrics["multi_attempt_rate"] == 1.0
    assert scores["FINE"].metadata["grader_version"] == "mockllm/model"
