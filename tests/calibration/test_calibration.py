"""Probabilistic bisection of the boost, and the threshold cache."""

from __future__ import annotations

import asyncio
import json
import os
import statistics

import numpy as np
import pytest

from esr_eval.calibration.bisection import (
    Bounds,
    CalibrationResult,
    bisect_boost,
    direction_confidence,
)
from esr_eval.calibration.cache import ThresholdCache
from esr_eval.calibration.rounds import calibrate_in_rounds, probes_per_round

TARGET = 0.3


def noisy_curve(crossing: float, width: float, rng: np.random.Generator, sd: float = 0.07, top: float = 1.0, calls: list | None = None):
    """A falling score curve from `top` that equals TARGET at `crossing`, with judge noise."""

    async def score(boost: float, trial: int) -> float:
        if calls is not None:
            calls.append(trial)
        await asyncio.sleep(0)  # let the other probes of a round start: they run concurrently
        clean = top / (1.0 + (top / TARGET - 1.0) * np.exp((boost - crossing) / width))
        return float(np.clip(clean + rng.normal(0, sd), 0, 1))

    return score


def test_few_rounds_reach_the_planted_threshold_of_noisy_curves():
    """Two rounds of three parallel probes find the planted crossing closer than ten sequential
    bisection trials do, on the same noisy curves (plateaus below 1, judge noise sd 0.15)."""
    rng = np.random.default_rng(1)
    scale = 150.0
    bounds = Bounds.from_scale(scale)
    misses = {"rounds": [], "bisection": []}
    for _ in range(60):
        crossing = float(np.clip(rng.normal(bounds.prior_mean, bounds.prior_sd), 20, bounds.upper - 20))
        width, top = scale * rng.uniform(0.08, 0.25), rng.uniform(0.55, 0.95)
        calls: list[int] = []
        found = asyncio.run(calibrate_in_rounds(noisy_curve(crossing, width, rng, 0.15, top, calls), bounds, TARGET, max_trials=6, rounds=2))
        assert found.trials == 6 and sorted(calls) == list(range(6))
        misses["rounds"].append(abs(found.threshold - crossing) / width)  # in units of the curve's width
        old = asyncio.run(bisect_boost(noisy_curve(crossing, width, rng, 0.15, top), bounds, TARGET, max_trials=10))
        misses["bisection"].append(abs(old.threshold - crossing) / width)
    new, old = np.array(misses["rounds"]), np.array(misses["bisection"])
    assert np.median(new) <= 0.4 and np.mean(new <= 1.0) >= 0.9
    assert np.median(new) < np.median(old)


def test_a_round_probes_its_boosts_at_once_and_spreads_them():
    started, finished = [], []

    async def score(boost: float, trial: int) -> float:
        started.append(boost)
        await asyncio.sleep(0.01)
        finished.append(boost)
        return 0.9 if boost < 50 else 0.0

    result = asyncio.run(calibrate_in_rounds(score, Bounds(0, 100, 40, 20), TARGET, max_trials=7, rounds=3))
    assert probes_per_round(7, 3) == [3, 2, 2] and probes_per_round(2, 3) == [1, 1]
    first_round = [b for b, _ in result.history[:3]]
    assert first_round == sorted(first_round) and len(set(first_round)) == 3
    assert 40 <= result.threshold <= 60  # the step at 50 lies between the probes scoring 0.9 and 0
    with pytest.raises(ValueError, match="1..4"):
        asyncio.run(calibrate_in_rounds(score, Bounds(0, 100, 40, 20), TARGET, max_trials=10, rounds=5))


def test_direction_confidence_points_the_right_way():
    assert direction_confidence(0.9, TARGET) > 0.9  # score far above target: push harder
    assert direction_confidence(0.0, TARGET) < 0.2
    assert direction_confidence(0.1, TARGET) < direction_confidence(0.5, TARGET)


def test_bisection_reaches_target_within_budget_on_noisy_curves():
    rng = np.random.default_rng(0)
    scale = 150.0  # residual-norm scale of the prior, as for a real layer
    bounds = Bounds.from_scale(scale)
    calls, errors, misses = [], [], []
    for _ in range(60):
        crossing = float(np.clip(rng.normal(bounds.prior_mean, bounds.prior_sd), 20, bounds.upper - 20))
        width = scale * rng.uniform(0.08, 0.25)
        result = asyncio.run(bisect_boost(noisy_curve(crossing, width, rng), bounds, TARGET, max_trials=20))
        calls.append(result.trials)
        errors.append(abs(result.score - TARGET))
        misses.append(abs(result.threshold - crossing) / width)  # in units of the curve's width
    assert statistics.median(calls) <= 8
    assert np.mean(np.array(errors) <= 0.1) >= 0.9
    # the threshold found lies near the planted crossing (a score 0.1 off the target is about
    # half a width away on this curve)
    assert statistics.median(misses) <= 0.5 and np.mean(np.array(misses) <= 1.0) >= 0.9


def test_bisection_moves_up_when_scores_stay_high():
    async def always_fine(boost: float, trial: int) -> float:
        return 0.95

    result = asyncio.run(bisect_boost(always_fine, Bounds(0, 10, 2, 1), TARGET, max_trials=6))
    assert result.trials == 6
    assert result.threshold > 4  # two prior sds above the prior mean
    assert [b for b, _ in result.history] == sorted(b for b, _ in result.history)


def _key(latent: int = 3, **changes) -> dict:
    key = dict(model="steered/m", dictionary="sae@2", latent=latent, grader="esr_judge/minilm@2", target=0.3, prompts="abc",
               max_tokens=384, temperature=0.6, top_p=1.0, repetition_penalty=1.1, calibration_trials=10,
               calibration="rounds@1x2", dtype="bfloat16", engine="hf")  # fmt: skip
    return {**key, **changes}


def test_cache_round_trip_and_reuse(tmp_path):
    cache = ThresholdCache(tmp_path / "t.jsonl")
    assert cache.get(**_key()) is None
    cache.put(CalibrationResult(12.5, 4, 0.31, [(10.0, 0.5), (12.5, 0.31)]), **_key())
    cache.put(CalibrationResult(7.0, 3, 0.28), **_key(4))
    cache.put(CalibrationResult(13.0, 5, 0.3), **_key())  # replaces latent 3
    got = cache.get(**_key())
    assert (got.threshold, got.trials, got.cached) == (13.0, 5, True)
    assert cache.thresholds(**_key()) == {3: 13.0, 4: 7.0}


def test_shipped_thresholds_are_read_after_the_users_cache_and_never_written(tmp_path):
    shipped = tmp_path / "shipped.jsonl"
    ThresholdCache(shipped, shipped=[]).put(CalibrationResult(9.0, 6, 0.3), **_key())
    before = shipped.read_text()
    cache = ThresholdCache(tmp_path / "user.jsonl", shipped=[shipped])
    assert cache.get(**_key()).threshold == 9.0 and cache.get(**_key(target=0.4)) is None  # the full key still decides
    cache.put(CalibrationResult(11.0, 6, 0.3), **_key())
    assert cache.get(**_key()).threshold == 11.0  # the user's own row wins
    assert shipped.read_text() == before and (tmp_path / "user.jsonl").exists()


@pytest.mark.parametrize(
    "change",
    [
        {"grader": "openai/gpt-4o-mini"},
        {"grader": "esr_judge/minilm@1"},  # the offline grader's rules changed
        {"max_tokens": 64},  # CI's short answers
        {"temperature": 0.0},
        {"top_p": 0.9},
        {"repetition_penalty": 1.2},
        {"calibration_trials": 3},
        {"calibration": "rounds@1x3"},  # another number of rounds
        {"calibration": "bisection@1"},
        {"dtype": "float32"},
        {"engine": "vllm"},
        {"target": 0.5},
        {"prompts": "other"},
        {"model": "tuned#1234"},
    ],
)
def test_anything_that_moves_a_threshold_misses_the_cache(tmp_path, change):
    cache = ThresholdCache(tmp_path / "t.jsonl")
    cache.put(CalibrationResult(12.5, 4, 0.31), **_key())
    assert cache.get(**_key(**change)) is None
    assert cache.get(**_key()).threshold == 12.5


def test_rows_of_the_older_format_are_not_reused(tmp_path):
    path = tmp_path / "t.jsonl"
    old = dict(model="steered/m", dictionary="sae@2", latent=3, grader="esr_judge/minilm", target=0.3, prompts="abc",
               threshold=99.0, trials=3, score=0.3, history=[])  # fmt: skip
    path.write_text(json.dumps(old) + "\n")
    cache = ThresholdCache(path)
    assert cache.get(**{**_key(), "grader": "esr_judge/minilm"}) is None
    assert cache.thresholds(model="steered/m") == {}
    cache.put(CalibrationResult(12.5, 4, 0.31), **_key())
    assert len(path.read_text().splitlines()) == 2  # the old row is kept, never matched


def _put_rows(path: str, latents: list[int]) -> None:
    cache = ThresholdCache(path)
    for k in latents:
        cache.put(CalibrationResult(float(k), 1, 0.3), **_key(k))


def test_two_processes_writing_one_cache_keep_both_rows(tmp_path):
    import multiprocessing

    path = str(tmp_path / "t.jsonl")
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_put_rows, args=(path, list(range(start, start + 40, 2)))) for start in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    assert ThresholdCache(path).thresholds(**_key()) == {k: float(k) for k in range(40)}


def test_killed_write_leaves_cache_readable(tmp_path, monkeypatch):
    cache = ThresholdCache(tmp_path / "t.jsonl")
    cache.put(CalibrationResult(12.5, 4, 0.31), **_key())

    def die(*args, **kwargs):
        raise KeyboardInterrupt  # the process is killed between writing and renaming

    monkeypatch.setattr(os, "replace", die)
    with pytest.raises(KeyboardInterrupt):
        cache.put(CalibrationResult(9.0, 2, 0.3), **_key(5))
    monkeypatch.undo()
    assert [json.loads(line)["latent"] for line in (tmp_path / "t.jsonl").read_text().splitlines()] == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jsonl", "t.jsonl.lock"]  # no temporary file left
    assert cache.get(**_key()).threshold == 12.5


def test_corrupt_line_is_reported_and_kept(tmp_path, caplog):
    path = tmp_path / "t.jsonl"
    ThresholdCache(path).put(CalibrationResult(1.0, 1, 0.3), **_key())
    with path.open("a") as fh:
        fh.write('{"model": "steered/m", "thresh\n')  # a writer elsewhere died mid-line
    with caplog.at_level("WARNING"):
        assert ThresholdCache(path).get(**_key()).threshold == 1.0
    assert f"{path} line 2 is not a JSON object" in caplog.text
    ThresholdCache(path).put(CalibrationResult(2.0, 1, 0.3), **_key(4))
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and '{"model": "steered/m", "thresh' in lines  # carried over, not dropped


def test_calibrate_command_fills_then_reuses_cache(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    from esr_eval.cli import main

    cache = tmp_path / "thresholds.jsonl"
    argv = ["calibrate", "--model", str(tiny_model_dir), "--dictionary", str(tiny_sae_dir), "--latents", "1,2",
            "--trials", "2", "--max-tokens", "4", "--cache", str(cache)]
    assert main(argv) == 0
    rows = [json.loads(line) for line in cache.read_text().splitlines()]
    assert sorted(r["latent"] for r in rows) == [1, 2]
    from esr_eval.judge.offline import GRADER_VERSION

    assert all(r["grader"] == f"esr_judge/minilm@{GRADER_VERSION}" and r["calibration_trials"] == 2 and 1 <= r["trials"] <= 2 for r in rows)
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("yes") == 2  # both thresholds came from the cache
    assert main(argv[:-2] + ["--target", "1.5"]) == 2  # a one-line error, exit code 2
