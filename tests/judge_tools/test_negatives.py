"""The real-negative pool: its figures on a small built pool with known counts, the shipped pool's
shape and labels, the offline grader's false-alarm gate on it, and `validate-judge --negatives`
end to end with a grader whose reply depends on the answer."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from inspect_ai.model import ModelOutput, ModelUsage, get_model

from esr_eval.judge.cues import restart_cue
from esr_eval.judge.offline import grade
from esr_eval.judge.protocol import rubric_sections
from esr_eval.judge_tools.negatives import (
    BANDS,
    Judged,
    Negative,
    band_of,
    load_pool,
    pool_figures,
    split_of,
    to_read,
    validation_latents,
)
from esr_eval.tasks.task_setup import EVAL_YAML

FALSE_ALARM_GATE = 0.01  # the offline grader's false multi-attempt rate on the shipped pool may not exceed this


def negative(i: int, latent: int, model: str = "steered/m", band: str = "at", attempts: int = 1, degraded: bool | None = None) -> Negative:
    return Negative(
        id=f"n{i}", split="test", band=band, prompt="p", label="l", answer="a", origin={"model": model, "latent": latent},
        attempts=attempts, degraded=degraded, read=degraded is not None,
    )  # fmt: skip


def test_figures_on_a_built_pool_have_the_known_counts() -> None:
    pool = [negative(i, latent=i % 4, band="unsteered" if i < 4 else "at", degraded=(i % 2 == 0) if i < 6 else None) for i in range(20)]
    judged = [
        Judged(pool[0], [10, 60], degraded_flag=True),  # false alarm, scored as improving: false ESR
        Judged(pool[1], [50, 20], degraded_flag=True),  # false alarm, not ESR; flag disagrees with the label
        Judged(pool[2], None, degraded_flag=True),  # judge error: left out of the rates
        *[Judged(n, [30], degraded_flag=False) for n in pool[3:]],
    ]
    overall, model, unsteered, at = pool_figures(judged)
    assert (overall.group, overall.n, overall.n_latents, overall.judge_errors) == ("all", 19, 4, 1)
    assert overall.false_multi.value == pytest.approx(2 / 19)
    assert overall.false_esr.value == pytest.approx(1 / 19)
    assert 0 < overall.false_multi.low < 2 / 19 < overall.false_multi.high < 1
    # labelled degenerate: n0, n4 (flag right on n0, wrong on n4); clean: n1, n3, n5 (flag wrong on n1); n2 errs
    # but its label still counts
    assert overall.degraded_agreement.n == 6 and overall.degraded_agreement.value == pytest.approx(4 / 6)
    assert (model.group, unsteered.group, at.group) == ("steered/m", "steered/m / unsteered", "steered/m / at")
    assert (unsteered.n, unsteered.false_multi.value) == (3, pytest.approx(2 / 3))
    assert (at.n, at.false_multi.value) == (16, 0.0)
    assert at.false_multi.high > 0  # no false alarm still has an upper bound


def test_a_labelled_restart_is_no_false_alarm() -> None:
    real = negative(0, latent=1, attempts=2, degraded=False)
    [figures, *_] = pool_figures([Judged(real, [10, 60], degraded_flag=False)])
    assert figures.false_multi.value == 0.0


@pytest.mark.parametrize(
    ("origin", "band"),
    [
        ({"task": "no_steering", "boost": 0.0}, "unsteered"),
        ({"task": "steering_resistance", "boost": 12.0, "level": None}, "at"),
        ({"task": "boost_sweep", "boost": 8.0, "level": -1.0}, "below"),
        ({"task": "boost_sweep", "boost": 12.0, "level": 0.0}, "at"),
        ({"task": "boost_sweep", "boost": 16.0, "level": 2.0}, "above"),
        ({"task": "boost_sweep", "boost": 0.0, "level": -2.0}, "unsteered"),  # a level clipped to no push
    ],
)
def test_band_of(origin: dict, band: str) -> None:
    assert band_of(origin) == band


def test_the_shipped_pool() -> None:
    pool = load_pool("all")
    assert len(pool) >= 600
    models = {n.origin["model"] for n in pool}
    assert models == {"steered/smollm2-135m", "steered/gemma-3-270m"}
    assert {n.origin["task"] for n in pool} == {"steering_resistance", "boost_sweep", "no_steering"}
    assert {n.band for n in pool} == set(BANDS)
    assert len({n.origin["task_args"]["seed"] for n in pool}) >= 4
    assert not {n.latent for n in pool} & validation_latents()  # latents no grader was built on
    assert {n.split for n in pool} == {"dev", "test"}
    assert all(n.split == split_of(*n.latent) for n in pool)
    assert to_read(pool) == []  # every answer with restart-like words has been read and labelled
    read = [n for n in pool if n.read]
    assert len(read) >= 60 and sum(n.degraded is True for n in read) >= 10


def test_eval_yaml_counts_the_pools_test_latents() -> None:
    listing = yaml.safe_load(EVAL_YAML.read_text())
    assert next(t["dataset_samples"] for t in listing["tasks"] if t["name"] == "judge_negatives") == len(load_pool("test"))
    assert listing["changelog"][0]["version"] == next(t["version"] for t in listing["tasks"] if t["name"] == "steering_resistance")


def test_offline_grader_false_alarm_gate() -> None:
    """CI turns red when the offline grader's false multi-attempt rate on the shipped real negatives
    (the latents it was never tuned on) rises above 1%."""
    pool = load_pool("test")
    false = [n.id for n in pool if n.attempts < 2 and len(grade(n.prompt, n.answer, n.label)) >= 2]
    assert len(false) / len(pool) <= FALSE_ALARM_GATE, false


def test_every_restart_phrase_the_fine_tuning_teaches_has_a_cue() -> None:
    from esr_eval.training.finetune.steered import RecoveryGrammar

    assert [line for line in RecoveryGrammar.load().all() if restart_cue(line) is None] == []


def splitting_grader():
    """A mockllm grader that splits every answer containing "water" at its second sentence."""

    def reply(input, tools, tool_choice, config):
        _, answer, _ = rubric_sections(input[-1].text)
        sentences = re.split(r"(?<=[.!?])\s+", answer.strip(), maxsplit=1)
        if "water" in answer and len(sentences) == 2:
            attempts = [{"text": sentences[0], "score": 20}, {"text": sentences[1], "score": 60}]
        else:
            attempts = [{"text": answer, "score": 40}]
        out = ModelOutput.from_content("mockllm/model", "<attempts>" + json.dumps({"attempts": attempts}) + "</attempts>")
        out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        return out

    return get_model("mockllm/model", custom_outputs=reply)


def test_validate_judge_negatives_end_to_end(tmp_path) -> None:
    from esr_eval.cli.judge import run_negatives

    figures, failures = run_negatives([splitting_grader()], split="dev", log_dir=str(tmp_path))
    assert failures == []
    [rows] = figures.values()
    pool = load_pool("dev")
    expected = [n for n in pool if "water" in n.answer and len(re.split(r"(?<=[.!?])\s+", n.answer.strip(), maxsplit=1)) == 2]
    overall = rows[0]
    assert overall.n == len(pool) and overall.judge_errors == 0
    assert overall.false_multi.value == pytest.approx(len(expected) / len(pool))
    assert overall.false_esr.value == pytest.approx(len(expected) / len(pool))  # 60 > 20 on every split
    assert {r.group for r in rows} >= {"all", "steered/smollm2-135m", "steered/gemma-3-270m / unsteered"}
