"""Sequential activations: attempt boundaries in tokens, region statistics, and the command end to end
on the tiny model with a real steered generation."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from esr_eval.analysis.boundaries import attempt_starts, boundary_tokens, locate
from esr_eval.analysis.regions import Episode, statistics

ANSWER = (
    "Bread needs flour. Volcano lava erupts! Wait, that's not right. Let me try again: knead the dough and bake it."
)
FIRST = "Bread needs flour. Volcano lava erupts!"
SECOND = "Wait, that's not right. Let me try again: knead the dough and bake it."


@pytest.fixture(scope="module")
def word_tokenizer():
    """One token per word or punctuation mark, so token indices can be counted by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(re.findall(r"\w+|[^\w\s]+", ANSWER)))
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]"] + words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


# tokens: Bread needs flour . Volcano lava erupts ! | Wait(8) , that ' s not right . | Let(16) me try again : ...
@pytest.mark.parametrize(
    "attempts, expected",
    [
        ([FIRST, SECOND], [0, 8]),
        # the judge's copy: curly quote, case, doubled spaces, a trimmed end
        (["bread needs flour.  Volcano lava erupts!", "wait,  that’s NOT right. Let me try again: knead"], [0, 8]),
        # the restart phrase counted in attempt 1
        (
            ["Bread needs flour. Volcano lava erupts! Wait, that's not right.", "Let me try again: knead the dough."],
            [0, 16],
        ),
        # attempt 2 paraphrased beyond recognition: it starts where attempt 1 ends
        ([FIRST, "A better recipe for sourdough."], [0, 8]),
        # three attempts
        ([FIRST, "Wait, that's not right.", "Let me try again: knead the dough and bake it."], [0, 8, 16]),
        # as dicts, the judge's attempts format
        ([{"text": FIRST, "score": 10}, {"text": SECOND, "score": 80}], [0, 8]),
    ],
)
def test_boundary_tokens(word_tokenizer, attempts, expected):
    assert boundary_tokens(word_tokenizer, ANSWER, attempts) == expected


def test_locate_characters():
    assert locate(ANSWER, "knead the dough") == ANSWER.index("knead")
    assert locate(ANSWER, "KNEAD -- the dough!!") == ANSWER.index("knead")
    assert locate(ANSWER, "completely unrelated words here") is None
    assert locate("lava lava lava", "lava", start=1) == 5
    assert attempt_starts(ANSWER, ["nothing like it at all", "nor this one either"]) == [None, None]


def _episode(activity: list[float], boundary: int) -> Episode:
    return Episode(1, 1, [], "", [], [], boundary=boundary, first_start=0, last_start=boundary, activity=activity)


def test_region_statistics():
    # off-topic tokens 0..9 (activation 5 + i/10), correction 10..15 (3), on-topic 16..25 (1)
    eps = [_episode([5 + i / 10] * 10 + [3.0] * 6 + [1.0] * 10, 13) for i in range(6)]
    s = statistics(eps, window=20, half_width=3)
    assert s["n_with_all_regions"] == 6
    assert s["regions"]["off_topic"]["mean"] == pytest.approx(5.25)
    assert s["regions"]["correction"]["mean"] == pytest.approx(3.0)
    assert s["regions"]["on_topic"]["mean"] == pytest.approx(1.0)
    assert s["regions"]["off_topic"]["ratio_to_on_topic"] == pytest.approx(5.25)
    # all six differences positive: exact one-sided p = 1/2**6
    assert s["tests"]["off_topic_vs_on_topic"]["p_value"] == pytest.approx(1 / 64)
    off = np.array([5 + i / 10 for i in range(6)])
    d = (off.mean() - 1.0) / math.sqrt(off.var(ddof=1) / 2)
    assert s["tests"]["off_topic_vs_on_topic"]["cohens_d"] == pytest.approx(d)
    curve = dict(zip(s["curve"]["offset"], s["curve"]["mean"]))
    assert curve[0] == 3.0 and curve[-13] == pytest.approx(5.25) and curve[12] == 1.0
    assert math.isnan(curve[13]) and s["curve"]["count"][s["curve"]["offset"].index(-14)] == 0


# ---------------------------------------------------------------- end to end on the tiny model

LATENT, BOOST = 5, 6.0


def _steered_log(tmp_path, tiny_model_dir, tiny_sae_dir, single: dict[int, float] | None = None):
    """Real steered generations from the tiny model; a judge that splits each answer in two halves
    (the samples in `single` answer once, with that score)."""
    single = single or {}
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import Score, scorer
    from inspect_ai.solver import solver

    from esr_eval.schema import TrialValue
    from esr_eval.steering.intervention import Intervention, steering_to_extra_body

    @solver
    def steer():
        async def solve(state, generate):
            meta = state.metadata
            body = steering_to_extra_body([Intervention(meta["latent"], meta["boost"])])
            return await generate(state, extra_body=body, max_tokens=24, seed=meta["seed"])

        return solve

    @scorer(metrics=[], name="halves_judge")
    def halves_judge():
        async def score(state, target):
            words = state.output.completion.split()
            half = len(words) // 2
            attempts = [{"text": " ".join(words[:half]), "score": 20}, {"text": " ".join(words[half:]), "score": 70}]
            scores = [20.0, 70.0] if half >= 2 else [20.0]
            if state.sample_id in single:
                attempts, scores = [{"text": state.output.completion, "score": single[state.sample_id]}], [single[state.sample_id]]
            value = TrialValue.from_scores(scores, [False] * len(scores), degraded=False).to_value()
            return Score(value=value, metadata={"grader": "halves", "attempts": attempts})

        return score

    samples = [
        Sample(
            id=i, input=f"Explain how to brew coffee, step {i}.", metadata={"latent": LATENT, "boost": BOOST, "seed": i}
        )
        for i in range(8)
    ]
    task = Task(name="steering_resistance", dataset=samples, solver=steer(), scorer=halves_judge())
    log = eval(
        task,
        model=f"steered/{tiny_model_dir}",
        model_args={"dictionary": str(tiny_sae_dir), "dtype": "float32"},  # read-outs compared to 1e-5
        log_dir=str(tmp_path / "logs"),
        display="none",
        max_connections=4,
    )[0]
    assert log.status == "success", log.error
    return log


def test_episodes_end_to_end(tmp_path, tiny_model_dir, tiny_sae_dir):
    from esr_eval.analysis.episodes import run_episodes
    from esr_eval.cli import main
    from esr_eval.steering.intervention import Intervention
    from esr_eval.steering.load import load_engine

    log = _steered_log(tmp_path, tiny_model_dir, tiny_sae_dir)
    detectors = tmp_path / "detectors.json"
    detectors.write_text(
        json.dumps(
            {
                "model": str(tiny_model_dir),
                "dictionary": str(tiny_sae_dir),
                "layer": 2,
                "rule": "strict",
                "latents": [1, 7, 11],
                "stats": [],
            }
        )
    )
    multi = [s for s in log.samples if s.scores["halves_judge"].value["multi_attempt"] == 1]
    assert multi, "the tiny model should write answers of several words"

    out = tmp_path / "steered"
    assert main(["episodes", log.location, "--detectors", str(detectors), "--out", str(out), "--window", "10"]) == 0
    result = json.loads((out / "episodes.json").read_text())
    assert (out / "episodes.png").read_bytes().startswith(b"\x89PNG") and (out / "episodes.png").stat().st_size > 5000
    assert result["n_episodes"] + result["n_unlocated"] == len(multi)
    assert result["n_episodes"] == len(multi)  # the judge's halves come from the answer itself
    assert result["curve"]["offset"] == list(range(-10, 11))

    # the activity at the boundary equals a direct read-out with the logged steering
    engine = load_engine(str(tiny_model_dir), str(tiny_sae_dir), dtype="float32")
    first = result["episodes"][0]
    sample = next(s for s in multi if s.id == first["sample_id"])
    answer = sample.output.completion
    messages = [{"role": "user", "content": sample.input}]
    (acts,) = engine.read_latents([(messages, answer)], [1, 7, 11], [[Intervention(LATENT, BOOST)]])
    summed = acts.sum(-1)
    assert first["n_tokens"] == len(summed)
    attempts = sample.scores["halves_judge"].metadata["attempts"]
    assert first["boundary_token"] == boundary_tokens(engine.tokenizer, answer, attempts)[1]
    off_start, off_end = boundary_tokens(engine.tokenizer, answer, attempts)[0] or 0, first["boundary_token"] - 3
    expected_off = float(summed[off_start:off_end].mean()) if off_end > off_start else None
    assert first["off_topic_mean"] == (pytest.approx(expected_off, rel=1e-5) if off_end > off_start else None)

    unsteered = run_episodes(log.location, str(detectors), tmp_path / "plain", unsteered=True, window=10)
    assert unsteered["steering"] == "none" and unsteered["n_episodes"] == result["n_episodes"]
    # the unsteered read-out differs where both curves have tokens (NaN marks offsets without any)
    pairs = [(a, b) for a, b in zip(unsteered["curve"]["mean"], result["curve"]["mean"]) if a is not None and b is not None]
    assert pairs and max(abs(a - b) for a, b in pairs) > 1e-4
    (plain_acts,) = engine.read_latents([(messages, answer)], [1, 7, 11])
    plain_first = next(e for e in unsteered["episodes"] if e["sample_id"] == first["sample_id"])
    if off_end > off_start:  # the same token span as the steered episode's off-topic mean
        assert plain_first["off_topic_mean"] == pytest.approx(float(plain_acts.sum(-1)[off_start:off_end].mean()), rel=1e-5)


def test_episodes_bad_input(tmp_path, tiny_model_dir, tiny_sae_dir):
    from esr_eval.cli import main

    missing = tmp_path / "none.json"
    assert main(["episodes", str(tmp_path), "--detectors", str(missing)]) == 2
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"latents": []}))
    assert main(["episodes", str(tmp_path), "--detectors", str(empty)]) == 2


def test_no_restart_baseline_beside_the_episodes(tmp_path, tiny_model_dir, tiny_sae_dir, capsys):
    """Steered one-attempt answers that went off topic (score <= 30) are read with their own
    steering over the episodes' median off-topic span; on-topic ones (score 80) stay out."""
    from esr_eval.cli import main
    from esr_eval.steering.intervention import Intervention
    from esr_eval.steering.load import load_engine

    log = _steered_log(tmp_path, tiny_model_dir, tiny_sae_dir, single={0: 10.0, 1: 30.0, 2: 80.0})
    detectors = tmp_path / "detectors.json"
    detectors.write_text(json.dumps({"layer": 2, "latents": [1, 7, 11]}))
    out = tmp_path / "steered"
    assert main(["episodes", log.location, "--detectors", str(detectors), "--out", str(out), "--window", "10"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "episodes.json").read_text())
    base = result["no_restart"]
    values = {s.id: s.scores["halves_judge"].value for s in log.samples}
    once = sorted(i for i, v in values.items() if v["n_attempts"] == 1 and v["first_score"] <= 30)  # 0, 1 and any too short to halve
    assert {0, 1} <= set(once) and 2 not in once
    assert base["n"] == len(once) and base["off_topic_max_score"] == 30.0
    assert sorted(r["sample_id"] for r in base["answers"]) == once
    assert {e["sample_id"] for e in result["episodes"]}.isdisjoint({0, 1, 2})
    span = int(np.median([e["boundary_token"] - 3 for e in result["episodes"]]))
    assert base["span_tokens"] == span > 0
    engine = load_engine(str(tiny_model_dir), str(tiny_sae_dir), dtype="float32")
    for row in base["answers"]:
        sample = next(s for s in log.samples if s.id == row["sample_id"])
        messages = [{"role": "user", "content": sample.input}]
        (acts,) = engine.read_latents([(messages, sample.output.completion)], [1, 7, 11], [[Intervention(LATENT, BOOST)]])
        summed = acts.sum(-1)
        assert row["n_tokens"] == len(summed)
        assert row["span_mean"] == pytest.approx(float(summed[:span].mean()), rel=1e-5)
        assert row["answer_mean"] == pytest.approx(float(summed.mean()), rel=1e-5)
    assert base["mean"] == pytest.approx(np.mean([r["span_mean"] for r in base["answers"]]))
    off = [e["off_topic_mean"] for e in result["episodes"] if e["off_topic_mean"] is not None]
    test = base["tests"]["off_topic_vs_no_restart"]
    from scipy.stats import mannwhitneyu

    assert test["p_value"] == pytest.approx(mannwhitneyu(off, [r["span_mean"] for r in base["answers"]], alternative="greater").pvalue)
    assert f"{len(once)} off-topic answers without a restart" in printed

    strict = tmp_path / "strict"
    assert main(["episodes", log.location, "--detectors", str(detectors), "--out", str(strict), "--off-topic-max", "5"]) == 0
    assert "no no-restart baseline" in capsys.readouterr().out
    none = json.loads((strict / "episodes.json").read_text())["no_restart"]
    assert none["n"] == 0 and none["mean"] is None and none["answers"] == []
