"""The tasks end to end: tiny random model, random SAE, mockllm grader keyed by the rubric."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPLIES, assert_each_answer_was_judged, keyed_grader, metrics, run
from inspect_ai import eval as inspect_eval

from esr_eval.config import TaskArgs
from esr_eval.sampling.latents import relevant_latents, sample_latents


def test_steering_resistance_end_to_end(tiny_model_dir, tiny_sae_dir, tmp_path):
    log = run("esr_eval/steering_resistance", tiny_model_dir, tiny_sae_dir, tmp_path, keyed_grader(REPLIES), latents=[1, 2, 3, 4], prompts_per_latent=2)
    m = metrics(log)
    assert m["n"] == 8
    assert m["multi_attempt_rate"] == pytest.approx(0.5)
    assert m["esr_rate"] == pytest.approx(0.5)
    assert m["improvement_rate"] == pytest.approx(1.0)
    assert m["mean_first_score"] == pytest.approx(30.0)
    assert m["mean_improvement"] == pytest.approx(50.0)
    assert m["judge_errors"] == 0
    assert log.results.headline.metric == "esr_rate" and list(m)[:5] == ["esr_rate", "esr_rate_ci_low", "esr_rate_ci_high", "n", "n_latents"]
    assert_each_answer_was_judged(log)
    for sample in log.samples:
        md = sample.metadata
        # the calibration's rounds judged the task's budget of answers
        assert md["calibration_trials"] == TaskArgs.calibration_trials and md["boost"] == md["threshold"] > 0
        # the samples list shows the steered concept (target) and the boost (a score column)
        assert sample.target == f"latent {md['latent']}: {md['label']}"
        assert sample.scores["attempts_judge"].value["boost"] == md["boost"]
        steering = [e for e in sample.events if e.event == "model" and e.config.extra_body]
        assert steering[-1].config.extra_body["steering"] == [{"latent": md["latent"], "value": md["boost"], "mode": "add"}]
        assert steering[-1].config.seed == md["seed"] == md["generation_seed"]  # epoch 1 keeps the sample seed


def test_second_run_reuses_thresholds_without_calibration(tiny_model_dir, tiny_sae_dir, tmp_path):
    first_calls: list[str] = []
    run("esr_eval/steering_resistance", tiny_model_dir, tiny_sae_dir, tmp_path, keyed_grader(REPLIES, first_calls), latents=[1, 2], prompts_per_latent=2)
    second_calls: list[str] = []
    log = run("esr_eval/steering_resistance", tiny_model_dir, tiny_sae_dir, tmp_path, keyed_grader(REPLIES, second_calls), latents=[1, 2], prompts_per_latent=2)
    assert len(first_calls) == 4 + 2 * TaskArgs.calibration_trials  # 4 trials judged + each latent's calibration answers
    assert len(second_calls) == 4  # only the trials: every threshold came from the cache
    assert {s.metadata["threshold"] for s in log.samples} == {
        json.loads(line)["threshold"] for line in (tmp_path / "thresholds.jsonl").read_text().splitlines()
    }


def test_no_steering_has_zero_boost_and_same_trials(tiny_model_dir, tiny_sae_dir, tmp_path):
    log = run("esr_eval/no_steering", tiny_model_dir, tiny_sae_dir, tmp_path, keyed_grader(REPLIES), latents=[1, 2, 3, 4], prompts_per_latent=2)
    base = run("esr_eval/steering_resistance", tiny_model_dir, tiny_sae_dir, tmp_path, keyed_grader(REPLIES), latents=[1, 2, 3, 4], prompts_per_latent=2)
    assert all(s.metadata["boost"] == 0.0 for s in log.samples)
    assert [(s.id, s.metadata["seed"]) for s in log.samples] == [(s.id, s.metadata["seed"]) for s in base.samples]
    for sample in log.samples:
        calls = [e for e in sample.events if e.event == "model" and e.config.extra_body]
        assert calls[-1].config.extra_body["steering"] == []
        assert sample.scores["attempts_judge"].metadata["label"] == sample.metadata["label"]


def test_non_steered_model_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--model steered/"):
        inspect_eval("esr_eval/steering_resistance", model="mockllm/model", log_dir=str(tmp_path), display="none")
    assert not list(tmp_path.iterdir())  # refused before any log was started


def test_relevance_filter_and_seeded_sampling(tiny_lm, tmp_path, monkeypatch):
    monkeypatch.setenv("ESR_EVAL_CACHE", str(tmp_path))  # the relevance pass's cache
    prompts = [[{"role": "user", "content": "Explain how to brew coffee."}], [{"role": "user", "content": "How do you tie a tie?"}]]
    top = relevant_latents(tiny_lm, prompts, "topk", top_k=5)
    strict = relevant_latents(tiny_lm, prompts, "strict")
    assert 5 <= len(top) <= 10 and top <= strict
    peaks = [tiny_lm.dictionary.encode(r).amax(0) for r in tiny_lm.prompt_residuals(prompts)]
    assert strict == {k for k in range(64) if any(p[k] > 0 for p in peaks)}
    a = sample_latents(tiny_lm, 3, [], seed=7)
    b = sample_latents(tiny_lm, 3, [], seed=7)
    c = sample_latents(tiny_lm, 3, [], seed=8)
    assert a.latents == b.latents and a.latents != c.latents
    with pytest.raises(ValueError, match="lower n_latents"):
        sample_latents(tiny_lm, 3, prompts, seed=0, relevance="strict" if len(strict) == 64 else "topk", concreteness=lambda k: None)


def test_relevance_pass_is_cached_per_key(tiny_lm, tmp_path, monkeypatch):
    from esr_eval.sampling.latents import relevance_cache_file

    monkeypatch.setenv("ESR_EVAL_CACHE", str(tmp_path))
    prompts = [[{"role": "user", "content": "Explain how to brew coffee."}], [{"role": "user", "content": "How do you tie a tie?"}]]
    computed = relevant_latents(tiny_lm, prompts, "topk", top_k=5)
    assert computed == relevant_latents(tiny_lm, prompts, "topk", top_k=5, cache=False)
    file = relevance_cache_file(tiny_lm, prompts, "topk", 5)
    assert json.loads(file.read_text()) == {"latents": sorted(computed)}
    assert {relevance_cache_file(tiny_lm, prompts, "strict", 5), relevance_cache_file(tiny_lm, prompts, "topk", 6),
            relevance_cache_file(tiny_lm, prompts[:1], "topk", 5)}.isdisjoint({file})  # fmt: skip

    def no_forward(*args, **kwargs):
        raise AssertionError("the cached result should be read, not computed")

    monkeypatch.setattr(tiny_lm, "prompt_residuals", no_forward)
    assert relevant_latents(tiny_lm, prompts, "topk", top_k=5) == computed
    with pytest.raises(AssertionError, match="should be read"):  # another k is another key
        relevant_latents(tiny_lm, prompts, "topk", top_k=6)
    file.write_text("{not json")
    monkeypatch.undo()
    monkeypatch.setenv("ESR_EVAL_CACHE", str(tmp_path))
    assert relevant_latents(tiny_lm, prompts, "topk", top_k=5) == computed  # a damaged file is computed again
    assert json.loads(file.read_text()) == {"latents": sorted(computed)}


def test_firing_frequencies_read_from_latent_stats(tmp_path):
    from esr_eval.sampling.latents import firing_frequencies
    from esr_eval.steering.dictionary import DirectionSet

    d = DirectionSet(torch.randn(3, 32), "d", layer=2, labels={})
    assert firing_frequencies(d) is None  # no folder: nothing to read
    d.folder = tmp_path
    (tmp_path / "latent_stats.json").write_text(json.dumps({"0": {"frequency": 0.25, "max_activation": 3.0}, "2": {"frequency": 0.0}}))
    assert firing_frequencies(d) == {0: 0.25, 2: 0.0}
    (tmp_path / "latent_stats.json").write_text(json.dumps({"firing_frequency": [0.1, 0.0, 0.3]}))
    assert firing_frequencies(d) == {0: 0.1, 1: 0.0, 2: 0.3}
