"""The continuation controls: prefixes without restarts, unsteered continuations, shared seeds,
restarts counted only in the continuation, paired figures, matched prefixes."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import USAGE, orthonormal_relu_sae, run, write_thresholds
from inspect_ai.model import ModelOutput, get_model

from esr_eval.analysis.boundaries import continuation_attempts
from esr_eval.judge.protocol import rubric_sections
from esr_eval.report.tables import write_report
from esr_eval.results.stats import PairedTrial, paired_figures
from esr_eval.sampling.prefixes import (
    clean_end,
    flagged_restarts,
    locate_restart,
    prefill_prefix,
    restart_prefixes,
    validation_restarts,
)
from esr_eval.schema import SourceAnswer, Trial, TrialValue
from esr_eval.steering.load import load_engine
from esr_eval.steering.models import model_fingerprint

PREFIX = "Photosynthesis turns light into sugar. The cat sat on the mat."
SOURCE = PREFIX + " Wait, that's not right, let me try again. To bake bread you mix flour and water."


def source_file(tmp_path, model_dir, latent: int = 3) -> str:
    answer = SourceAnswer(
        id="a1", model=f"steered/{model_dir}", prompt="Explain how to bake bread.", label=f"topic ({latent})",
        answer=SOURCE, first_score=10.0, clean_end=SOURCE.index(" Wait") + 1, latent=latent, boost=4.0,
        restart_start=SOURCE.index("Wait"), restart_end=SOURCE.index(" To bake"),
    )  # fmt: skip
    path = tmp_path / "prefixes.jsonl"
    path.write_text(json.dumps(answer.to_dict()) + "\n")
    return str(path)


def text_grader(split: str):
    """A grader that reads the answer: attempt 1 is its start; attempt 2 starts at `split`'s text:
    "prefix" (a false restart at the prefix's second sentence) or "continuation" (what follows the
    prefix). Scores 10 and 90."""

    def reply(input, tools, tool_choice, config):
        _, answer, _ = rubric_sections(input[-1].text)
        second = answer[answer.index("The cat") :] if split == "prefix" else answer[len(PREFIX) :].strip()
        attempts = [{"text": answer[: answer.index(second)].strip() or answer, "score": 10}]
        if second:
            attempts.append({"text": second, "score": 90})
        out = ModelOutput.from_content("mockllm/model", f"<attempts>{json.dumps({'attempts': attempts})}</attempts>")
        out.usage = USAGE
        return out

    return get_model("mockllm/model", custom_outputs=reply)


# ------------------------------------------------------------------ prefixes


def test_no_prefix_holds_a_restart(tiny_lm):
    """Written restarting answers: the prefix stops before the labelled restart, whether the judge
    found it (second attempt) or missed it (the classifier's flag then stops the cut)."""
    rows = validation_restarts()
    assert len(rows) > 50
    cut = 0
    for row in rows:
        first, second = row.answer[: row.restart_start], row.answer[row.restart_start :]
        flagged = flagged_restarts(row.answer)
        for attempts in ([{"text": first}, {"text": second}], [{"text": row.answer}]):
            start, _ = locate_restart(row.answer, attempts, flagged)
            answer = SourceAnswer(**{**row.to_dict(), "clean_end": clean_end(row.answer, start, flagged), "restart_start": start})
            if len(attempts) == 2:
                assert abs(start - row.restart_start) <= 2  # a labelled dash before the words may be skipped
            for budget in (8, 40, 400):
                prefix = prefill_prefix(answer, tiny_lm.tokenizer, budget)
                if prefix is None:
                    continue
                cut += 1
                caught = any(abs(start - row.restart_start) <= 2 for start, _ in flagged)
                if len(attempts) == 2 or caught:  # found by the judge, or flagged by the classifier
                    assert row.answer.startswith(prefix) and len(prefix) <= row.restart_start
                    assert row.answer[row.restart_start : row.restart_end] not in prefix
                assert len(tiny_lm.tokenizer(prefix, add_special_tokens=False)["input_ids"]) <= budget
                assert prefix[-1] in ".!?\u2026" or row.answer[len(prefix) : len(prefix) + 1] == "\n"
    assert cut > 100
    missed = [r for r in rows if not any(abs(s - r.restart_start) <= 2 for s, _ in flagged_restarts(r.answer))]
    assert len(missed) <= len(rows) // 10  # the classifier flags nearly every written restart the judge might miss


def test_prefix_of_a_log_answer_stops_at_the_sentence_before_the_restart(tiny_lm):
    answer = SourceAnswer("x", None, "p", "l", SOURCE, 10.0, clean_end=SOURCE.index("Wait"))
    assert prefill_prefix(answer, tiny_lm.tokenizer, 400) == PREFIX  # 41 tokens
    assert prefill_prefix(answer, tiny_lm.tokenizer, 40) == "Photosynthesis turns light into sugar."  # 28 tokens
    assert prefill_prefix(answer, tiny_lm.tokenizer, 27) is None


def test_restart_and_matched_prefixes_hold_the_same_on_topic_tokens(tiny_lm):
    row = next(r for r in validation_restarts() if r.id == "w-dev-001")
    restart, matched = restart_prefixes(row, tiny_lm.tokenizer, 5)
    piece = restart[row.restart_end :]
    assert restart == row.answer[: row.restart_end] + piece and piece == row.answer[row.restart_end : row.restart_end + len(piece)]
    assert len(tiny_lm.tokenizer(piece, add_special_tokens=False)["input_ids"]) == 5
    assert matched == row.answer[: row.restart_start].rstrip() + piece
    assert "Wait, that's not right" in restart and "Wait" not in matched and "try again" not in matched
    assert not flagged_restarts(matched)


def test_continuation_attempts_count_only_after_the_boundary():
    answer = "Off topic start. The cat sat. Wait, let me restart. Bread needs flour."
    boundary = answer.index(" Wait")
    attempts = [{"text": "Off topic start."}, {"text": "The cat sat."}, {"text": "Wait, let me restart. Bread needs flour."}]
    assert continuation_attempts(answer, attempts, boundary) == ([1, 2], 1)
    assert continuation_attempts(answer, attempts[:2], boundary) == ([1], 1)
    assert continuation_attempts(answer, [attempts[0], attempts[2]], boundary) == ([0, 1], 0)
    assert continuation_attempts(answer, [{"text": "not in the answer at all"}, {"text": "zzz qqq"}], boundary)[0][0] == 0


# ------------------------------------------------------------------ paired figures


def paired(condition: str, pair: str, latent: int, restart: bool, score: float, error: bool = False) -> PairedTrial:
    scores = [10.0, score] if restart else [score]
    value = TrialValue.failed(False) if error else TrialValue.from_scores(scores, [False] * len(scores), False)
    return PairedTrial(condition, pair, Trial(value, latent))


def test_paired_figures_exact():
    trials = [
        paired("plain", "a", 1, False, 20), paired("detectors", "a", 1, True, 80), paired("random", "a", 1, False, 30),
        paired("random", "a", 1, True, 50),  # a second random set: the pair counts its mean
        paired("plain", "b", 2, True, 60), paired("detectors", "b", 2, True, 70), paired("random", "b", 2, False, 40),
        paired("plain", "c", 3, False, 10), paired("detectors", "c", 3, False, 0, error=True),  # judge error: pair c drops out
    ]  # fmt: skip
    f = paired_figures(trials, ["plain", "detectors", "random"], [("detectors", "plain"), ("detectors", "random")])
    assert f["restart_rate[plain]"] == pytest.approx(1 / 3)
    assert f["restart_rate[detectors]"] == pytest.approx(1.0) and f["n_pairs[detectors]"] == 2
    assert f["restart_rate[random]"] == pytest.approx(0.25)  # pair a 0.5, pair b 0
    assert f["continuation_score[plain]"] == pytest.approx(30.0)
    assert f["continuation_score[random]"] == pytest.approx(40.0)  # a: (30 + 50) / 2, b: 40
    assert f["restart_diff[detectors-plain]"] == pytest.approx(0.5)  # pairs a (+1) and b (0)
    assert f["continuation_score_diff[detectors-plain]"] == pytest.approx(35.0)  # a +60, b +10
    assert f["continuation_score_diff[detectors-random]"] == pytest.approx(35.0)  # a 80 - 40, b 70 - 40
    # two latents, differences 60 and 10: standard error 25, t(0.975, 1 df) = 12.706
    assert f["continuation_score_diff[detectors-plain]_ci_high"] == pytest.approx(35 + 12.7062047 * 25, rel=1e-6)


# ------------------------------------------------------------------ the tasks end to end


def test_prefill_continuation_is_unsteered(tiny_model_dir, tiny_sae_dir, tmp_path):
    """The residual at the layer over prompt + prefix + continuation equals an unsteered forward,
    and the prefix sits in the assistant's turn, open for the model to continue."""
    lm = load_engine(str(tiny_model_dir), str(tiny_sae_dir), dtype="float32", max_batch_size=1)  # the task's engine
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    pre = lm.model.register_forward_pre_hook(lambda m, a, kw: inputs.append(kw["input_ids"].clone()), with_kwargs=True)
    post = lm.model.model.layers[2].register_forward_hook(lambda m, a, out: outputs.append((out if torch.is_tensor(out) else out[0]).detach().clone()))
    try:
        log = run("esr_eval/prefill_detection", tiny_model_dir, tiny_sae_dir, tmp_path, text_grader("continuation"),
                  model_args={"dtype": "float32", "max_batch_size": 1}, source=source_file(tmp_path, tiny_model_dir), max_tokens=10)  # fmt: skip
    finally:
        pre.remove(), post.remove()
    (sample,) = log.samples
    assert sample.metadata["condition"] == "plain" and sample.metadata["boost"] == 0.0
    calls = [e for e in sample.events if e.event == "model" and e.config.extra_body]
    assert calls[-1].config.extra_body["steering"] == []
    ids = torch.cat(inputs, dim=1)
    prompt = lm.prompt_ids([{"role": "user", "content": "Explain how to bake bread."}, {"role": "assistant", "content": PREFIX}])
    assert ids[0, : len(prompt)].tolist() == prompt and lm.tokenizer.decode(prompt).endswith(PREFIX)
    fed = lm.tokenizer.decode(ids[0, len(prompt) :])  # every generated token but the last is fed back
    assert len(fed) > 0 and sample.output.completion.startswith(fed) and len(fed) < len(sample.output.completion)
    with lm.hooks.active(None, record=True) as record:
        lm.model(input_ids=ids)
    torch.testing.assert_close(torch.cat(outputs, dim=1), record[0], atol=1e-5, rtol=1e-4)


def test_prefill_conditions_share_seeds_and_restarts_in_the_prefix_do_not_count(tiny_model_dir, tmp_path):
    sae_dir = orthonormal_relu_sae(tmp_path / "ortho")
    lm = load_engine(str(tiny_model_dir), str(sae_dir))
    (tmp_path / "det.json").write_text(json.dumps({"dictionary": lm.dictionary_id, "latents": [5, 6], "firing_frequency": [0.01 * (k + 1) for k in range(16)]}))
    source = source_file(tmp_path, tiny_model_dir)
    common = dict(source=source, detectors=str(tmp_path / "det.json"), max_tokens=12)
    in_prefix = run("esr_eval/prefill_detection", tiny_model_dir, sae_dir, tmp_path, text_grader("prefix"), **common)
    after = run("esr_eval/prefill_detection", tiny_model_dir, sae_dir, tmp_path, text_grader("continuation"), **common)
    for log in (in_prefix, after):
        by_condition = {s.metadata["condition"]: s for s in log.samples}
        assert set(by_condition) == {"plain", "detectors", "random"}
        assert by_condition["detectors"].metadata["ablated"] == [5, 6]
        assert not {5, 6} & set(by_condition["random"].metadata["ablated"])
        seeds = {s.metadata["seed"] for s in log.samples}
        used = {e.config.seed for s in log.samples for e in s.events if e.event == "model" and e.config.extra_body}
        assert len(seeds) == 1 and used == seeds
        for s in log.samples:
            assert s.metadata["prefix"] == PREFIX
            assert all(i["mode"] == "clamp" and i["value"] == 0.0 for e in s.events if e.event == "model" and e.config.extra_body
                       for i in e.config.extra_body["steering"])  # fmt: skip
            assert s.scores["attempts_judge"].answer == PREFIX + s.output.completion
    for s in in_prefix.samples:  # the judge put a restart at "The cat", inside the prefix: not counted
        v = s.scores["attempts_judge"].value
        assert (v["n_attempts"], v["multi_attempt"], v["attempts_in_prefix"], v["first_score"]) == (1, 0, 1, 90)
    for s in after.samples:  # a restart where the continuation starts: counted
        v = s.scores["attempts_judge"].value
        assert (v["n_attempts"], v["multi_attempt"], v["esr"], v["attempts_in_prefix"], v["last_score"]) == (2, 1, 1, 0, 90)
    m = {name: x.value for sc in after.results.scores for name, x in sc.metrics.items()}
    assert m["restart_rate[plain]"] == 1.0 and m["restart_diff[detectors-plain]"] == 0.0 and m["n_pairs[random]"] == 1
    assert after.results.headline.metric == "restart_rate[plain]"
    m = {name: x.value for sc in in_prefix.results.scores for name, x in sc.metrics.items()}
    assert m["restart_rate[plain]"] == 0.0 and m["continuation_score[detectors]"] == 90.0
    _, _, _, panels = write_report([str(tmp_path / "logs")], tmp_path / "report")  # the newest run: `after`
    rows = {r[2]: r for r in panels["prefill_detection"]}
    assert list(rows) == ["plain", "detectors", "random", "detectors - plain", "random - plain", "detectors - random"]
    assert rows["plain"][3:6] == ["1", "1", "100.0% [20.7, 100.0]"] and rows["detectors - plain"][5] == "+0.0 pp"
    assert "## prefill_detection: paired conditions" in (tmp_path / "report" / "report.md").read_text()


def test_prefill_refuses_another_models_words(tiny_model_dir, tiny_sae_dir, tmp_path):
    path = tmp_path / "other.jsonl"
    row = json.loads(open(source_file(tmp_path, tiny_model_dir)).read())
    path.write_text(json.dumps({**row, "model": "steered/gemma-3-270m"}) + "\n")
    with pytest.raises(ValueError, match="the model's own words"):
        run("esr_eval/prefill_detection", tiny_model_dir, tiny_sae_dir, tmp_path, text_grader("prefix"), source=str(path))
    with pytest.raises(ValueError, match="drop -T n_latents"):
        run("esr_eval/prefill_detection", tiny_model_dir, tiny_sae_dir, tmp_path, text_grader("prefix"), source=str(path), n_latents=3)


def test_matched_prefix_conditions(tiny_model_dir, tiny_sae_dir, tmp_path):
    lm = load_engine(str(tiny_model_dir), str(tiny_sae_dir))
    write_thresholds(tmp_path / "thresholds.jsonl", model_fingerprint(str(tiny_model_dir)), lm.dictionary_id, {1: 3.0}, target=0.3, dtype=lm.dtype)
    calls: list[str] = []

    def reply(input, tools, tool_choice, config):
        _, answer, _ = rubric_sections(input[-1].text)
        calls.append(answer)
        out = ModelOutput.from_content("mockllm/model", f"<attempts>{json.dumps({'attempts': [{'text': answer, 'score': 60}]})}</attempts>")
        out.usage = USAGE
        return out

    log = run("esr_eval/matched_prefix", tiny_model_dir, tiny_sae_dir, tmp_path, get_model("mockllm/model", custom_outputs=reply),
              latents=[1], prompts_per_latent=1, n_answers=2, on_topic_tokens=4)  # fmt: skip
    rows = {r.id: r for r in validation_restarts()}
    pairs: dict[str, dict] = {}
    for s in log.samples:
        pairs.setdefault(s.metadata["pair"], {})[s.metadata["condition"]] = s
    assert len(pairs) == 2
    for by in pairs.values():
        assert set(by) == {"restart", "matched", "off"}
        assert len({s.metadata["seed"] for s in by.values()}) == 1
        assert by["restart"].metadata["boost"] == by["matched"].metadata["boost"] == 3.0 and by["off"].metadata["boost"] == 0.0
        restart, matched = by["restart"].metadata["prefix"], by["matched"].metadata["prefix"]
        assert by["off"].metadata["prefix"] == restart and len(matched) < len(restart)
        row = rows[by["restart"].metadata["pair"]]
        piece = restart[row.restart_end :]  # the same on-topic tokens end both prefixes
        assert piece.strip() and restart == row.answer[: row.restart_end] + piece
        assert matched == row.answer[: row.restart_start].rstrip() + piece
        for s in by.values():  # the judge read the continuation alone
            assert s.scores["attempts_judge"].answer == s.output.completion
    assert sorted(calls) == sorted(s.output.completion.strip() for s in log.samples)
    m = {name: x.value for sc in log.results.scores for name, x in sc.metrics.items()}
    assert m["continuation_score[restart]"] == 60.0 and m["continuation_score_diff[restart-matched]"] == 0.0
