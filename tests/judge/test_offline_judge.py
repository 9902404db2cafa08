"""The offline grader esr_judge/minilm: attempt splitting, scores, its floors on the test half of
the judge-validation set, and its use as the default grader and as a re-scoring grader through
the `inspect score` CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import TEST_DATA
from inspect_ai import Task, eval
from inspect_ai.dataset import Sample
from inspect_ai.log import read_eval_log
from inspect_ai.model import ChatMessage, ModelOutput, ModelUsage, get_model
from inspect_ai.solver import generate

from esr_eval.config import OFFLINE_GRADER
from esr_eval.judge.offline import GRADER_VERSION, grade, split_attempts
from esr_eval.judge.protocol import judge_answer
from esr_eval.judge_tools.validation import compare, metric_value
from esr_eval.judge_tools.validation_set import load_validation_set
from esr_eval.scorers import attempts_judge

PROMPT = "Explain how to brew coffee with a French press."
LABEL = "volcanoes, magma and lava"
ON_TOPIC = (
    "Heat water to about 95 C. Put coarse ground coffee in the French press, pour the water over it "
    "and stir. Let it steep for four minutes, then press the plunger down slowly and pour the coffee."
)
OFF_TOPIC = (
    "Volcanoes erupt when magma rises through cracks in the crust. Lava flows down the slopes "
    "and cools into basalt rock."
)
RESTARTED = OFF_TOPIC + " Wait, that's not right, let me try again. " + ON_TOPIC


def test_on_topic_answer_scores_high() -> None:
    [attempt] = grade(PROMPT, ON_TOPIC, LABEL)
    assert 80 <= attempt["score"] <= 95
    assert attempt["serves_concept"] is False


def test_answer_about_the_concept_scores_low() -> None:
    [attempt] = grade(PROMPT, OFF_TOPIC, LABEL)
    assert attempt["score"] < 30
    assert attempt["serves_concept"] is True


def test_restart_phrase_splits_into_two_attempts() -> None:
    first, second = grade(PROMPT, RESTARTED, LABEL)
    assert first["text"] == OFF_TOPIC
    assert second["text"].startswith("Wait, that's not right, let me try again.")
    assert first["score"] < 30 <= 80 <= second["score"]
    assert (first["serves_concept"], second["serves_concept"]) == (True, False)


def test_repetitive_text_scores_low() -> None:
    [attempt] = grade(PROMPT, "French press coffee coffee coffee coffee coffee coffee coffee coffee.", LABEL)
    assert attempt["score"] < 30


@pytest.mark.parametrize(
    ("answer", "n_attempts"),
    [
        ("", 0),
        ("Do you want it strong or mild? Hot or iced?", 0),
        ("Boil water. Wait for it to cool a little. Pour it over the grounds.", 1),  # "Wait for" is no restart
        ("That's right: boil water first. Then pour it over the grounds.", 1),
        ("Lava is hot. Sorry, I got off track. Back to your question. Boil water and pour it.", 2),
        ("Lava is hot. Wait. That's not right. Let me start over. Boil water. Actually, let me redo it. Pour it in.", 3),
        ("Boil water and pour it. Wait, let me try again.", 1),  # a restart with nothing after it
    ],
)
def test_split_attempts(answer: str, n_attempts: int) -> None:
    assert len(split_attempts(answer)) == n_attempts


@pytest.mark.parametrize(
    ("answer", "n_attempts"),
    [
        # the default run's only multi-attempt answer under grader v2 split here
        ("A fridge keeps food cold like the sea keeps whales cold. The whales swim deep. Wait. Now. Now. Repeat. "
         "Repeat. Repeat. Repeat. Repeat. Now. Now. The whales the whales the whales the whales.", 1),
        ("Lava is hot. Sorry sorry sorry sorry sorry sorry. Lava lava lava lava lava.", 1),
        ("Boil the water. Let me try again. Let me try again. Let me try again. Let me try again. Let me try again.", 1),
        ("Magma magma magma. No no no no no no, the lava lava lava lava lava lava flows flows flows flows.", 1),
        # a real restart out of degenerate text still counts
        ("Lava lava lava lava lava lava lava. Wait, that's gibberish, let me start again. "
         "Boil the water and pour it over the coffee grounds.", 2),
    ],
)
def test_no_restart_inside_degenerate_text(answer: str, n_attempts: int) -> None:
    assert len(grade(PROMPT, answer, LABEL)) == n_attempts


def test_elaboration_and_instructions_with_restart_words_are_one_attempt() -> None:
    answer = (
        "Heat water to about 95 C. Put coarse coffee in the press and pour the water over it. "
        "Let me explain again in other words: hot water, coarse coffee, four minutes. "
        "If the coffee tastes weak, stop and try again later with more grounds."
    )
    assert len(grade(PROMPT, answer, LABEL)) == 1


def test_floors_on_the_test_half() -> None:
    """The figures the offline grader must reach on answers none of its training saw."""
    rows = load_validation_set(split="test")
    comparisons = [
        compare(r.n_attempts, r.improves, r.first_band, [a["score"] for a in grade(r.prompt, r.answer, r.label)]) for r in rows
    ]
    assert len(rows) >= 100
    assert metric_value(comparisons, "multi_precision") >= 0.95
    assert metric_value(comparisons, "multi_recall") >= 0.93  # v5: 39/41
    assert metric_value(comparisons, "multi_f1") >= 0.92
    assert metric_value(comparisons, "count_accuracy") >= 0.92
    assert metric_value(comparisons, "improvement_sign_agreement") >= 0.94  # v5: 37/39 (two failed restarts scored up)
    assert metric_value(comparisons, "first_score_spearman") >= 0.62


def test_offline_grader_speaks_the_protocol_through_inspect() -> None:
    grader = get_model(OFFLINE_GRADER)
    result = asyncio.run(judge_answer(grader, PROMPT, RESTARTED, LABEL))
    assert (result.error, result.n_calls, len(result.attempts)) == (False, 1, 2)
    assert result.raw.startswith("<attempts>") and result.raw.endswith("</attempts>")
    assert result.attempts[1].score > result.attempts[0].score


def _answer(input: list[ChatMessage], *_: Any) -> ModelOutput:
    output = ModelOutput.from_content(model="mockllm/model", content=RESTARTED)
    output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
    return output


def test_default_grader_is_offline_not_the_evaluated_model(tmp_path: Path) -> None:
    task = Task(
        dataset=[Sample(input=PROMPT, metadata={"label": LABEL, "latent": 3, "boost": 1.0})],
        solver=generate(),
        scorer=attempts_judge(),
    )
    [log] = eval(task, model=get_model("mockllm/model", custom_outputs=_answer), log_dir=str(tmp_path), display="none")
    assert log.status == "success", log.error
    score = log.samples[0].scores["attempts_judge"]
    assert score.metadata["grader"] == OFFLINE_GRADER
    assert score.metadata["grader_version"] == f"{OFFLINE_GRADER}@{GRADER_VERSION}"
    assert score.metadata["judge_faults"] == []  # its attempt texts are copied from the answer
    assert score.value["esr"] == 1.0 and score.value["n_attempts"] == 2.0


def test_inspect_score_cli_rescores_with_another_grader(tmp_path: Path) -> None:
    def canned_grader(input: list[ChatMessage], *_: Any) -> ModelOutput:
        reply = '<attempts>[{"text": "x", "score": 50}]</attempts>'
        output = ModelOutput.from_content(model="mockllm/model", content=reply)
        output.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        return output

    task = Task(dataset=[Sample(input=PROMPT, metadata={"label": LABEL})], solver=generate(), scorer=attempts_judge())
    [log] = eval(
        task,
        model=get_model("mockllm/model", custom_outputs=_answer),
        model_roles={"grader": get_model("mockllm/model", custom_outputs=canned_grader)},
        log_dir=str(tmp_path),
        display="none",
    )
    assert log.samples[0].scores["attempts_judge"].metadata["grader"] == "mockllm/model"
    inspect_cli = Path(sys.executable).parent / "inspect"
    env = {**os.environ, "INSPECT_DISPLAY": "none", "HF_HUB_OFFLINE": "1"}
    command = [str(inspect_cli), "score", log.location, "--scorer", "esr_eval/attempts_judge",
               "--model-role", f"grader={OFFLINE_GRADER}", "--action", "append", "--overwrite"]  # fmt: skip
    # no terminal (stdin closed), as in CI: the recipe must not stop to ask
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-2000:]
    rescored = read_eval_log(log.location)
    scores = rescored.samples[0].scores
    new = [name for name in scores if name != "attempts_judge"]
    assert len(new) == 1
    assert scores[new[0]].metadata["grader"] == OFFLINE_GRADER
    assert scores[new[0]].value["n_attempts"] == 2.0
    assert scores["attempts_judge"].value["first_score"] == 50.0
    from esr_eval.analysis.agreement import agreements

    [pair] = agreements(rescored)  # `esr-eval agreement` finds both judges
    assert (pair.grader_a, pair.grader_b) == ("mockllm/model", OFFLINE_GRADER) and pair.n == 1


def test_every_trained_recovery_line_starts_a_new_attempt() -> None:
    """The offline grader must see the corrections that `esr-eval finetune` teaches (held out: none
    of these lines is in the grader's training material, see test_judge_validation_set.py)."""
    from esr_eval.training.finetune.data import OffTopicBank

    lines = OffTopicBank.load().recovery_lines
    assert len(lines) >= 20
    for line in lines:
        assert len(split_attempts(f"Lava is hot and glows red. {line} Boil water and pour it.")) == 2, line


@pytest.mark.parametrize(
    "sentence",
    [
        "Well, that is the key step.",
        "No, you should not boil the milk.",
        "I have lost weight by walking.",
        "That is irrelevant to the taste.",
        "I'm drifting through the options here.",
        "Sorry to hear that the bread failed.",
    ],
)
def test_ordinary_sentences_are_no_restart(sentence: str) -> None:
    answer = f"Heat water and pour it over the coffee in the press. {sentence} Press the plunger after four minutes."
    assert len(grade(PROMPT, answer, LABEL)) == 1


DEFAULT_RUN = json.loads((TEST_DATA / "default_run_answers.json").read_text())["answers"]


@pytest.mark.parametrize("row", DEFAULT_RUN, ids=[r["id"] for r in DEFAULT_RUN])
def test_the_default_runs_false_alarms_are_one_attempt(row: dict) -> None:
    """Real answers of the default eval that the offline grader v3 split (or that the issue quoted):
    one attempt each, so no ESR; the one made of fused non-words is degraded."""
    from esr_eval.judge.text import is_degraded

    assert len(grade(row["prompt"], row["answer"], row["label"])) == 1
    assert is_degraded(row["answer"]) is (row["id"] == "l4169-p38")


CODE_PROMPT = "Explain how to fold a paper airplane that flies far."
CODE_LABEL = "Python code objects"


@pytest.mark.parametrize(
    "answer",
    [
        # a numbered list cut between two items, as grader v3 cut the default run's l4097-p07
        "Here is how it works.\n1. Fold the sheet in half along its length.\n2. Fold the top corners to the "
        "centre line.\n3. Now add the people - that is where our magic happens.\nYou have created a reality within "
        "the existing one.\n4. Fold the wings down and throw it level.",
        "Fold the sheet in half, or rather crease it lightly first, then fold the corners to the centre line.",
        "Fold the corners to the centre. I mean, make the creases really sharp, so the nose stays pointed.",
        "Fold the wings level. If it dives, bend the back edges up a little and try again later.",
        "Sorry if this sounds obvious, but start with a crisp sheet. Fold it in half, fold the corners to the "
        "centre line and fold the wings down level.",
        # an apology inside degenerate text (the default run's l4169-p38 as the issue quoted it)
        "the way I made the magic thecatasoussopadhistant theunrighthandhandlerlessassistant. I'm sorry, I "
        "misunderstood your message. Paperplanewingsassistantforeveryourworld hiiiraimgoumousdouraunamisistant.",
    ],
    ids=["list-break", "or-rather", "i-mean", "try-again-later", "apology-on-topic", "apology-in-degenerate-text"],
)
def test_restart_words_that_open_no_fresh_attempt_are_one_attempt(answer: str) -> None:
    assert len(grade(CODE_PROMPT, answer, CODE_LABEL)) == 1


def test_a_restart_into_degenerate_text_opens_no_attempt() -> None:
    answer = OFF_TOPIC + " Wait, that's not right, let me try again. thecatasoussopadhistant theunrighthandhandlerlessassistant coffeeeverywherepressassistant."
    assert len(grade(PROMPT, answer, LABEL)) == 1


def test_a_loop_back_to_earlier_text_opens_no_attempt() -> None:
    answer = OFF_TOPIC + " Sorry, I went off topic. " + OFF_TOPIC + " " + OFF_TOPIC
    assert len(grade(PROMPT, answer, LABEL)) == 1


def test_scores_are_integers_and_rank_the_attempts() -> None:
    on, off = grade(PROMPT, ON_TOPIC, LABEL)[0]["score"], grade(PROMPT, OFF_TOPIC, LABEL)[0]["score"]
    assert isinstance(on, int) and isinstance(off, int)
    assert off < 30 < 80 <= on
