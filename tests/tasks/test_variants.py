"""Variant tasks end to end on the tiny model, and the detector / control machinery."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from helpers import (
    REPLIES,
    keyed_grader,
    metrics,
    orthonormal_relu_sae,
    run,
    write_thresholds,
)

from esr_eval.detectors.controls import frequency_bins, matched_controls
from esr_eval.detectors.discovery import derangement, select_detectors, separation_stats
from esr_eval.steering.load import load_engine
from esr_eval.steering.models import model_fingerprint
from esr_eval.tasks.meta_prompt import META_PROMPTS


def test_boost_sweep_levels_use_cached_thresholds(tiny_model_dir, tiny_sae_dir, tmp_path):
    lm = load_engine(str(tiny_model_dir), str(tiny_sae_dir))
    thresholds = {1: 4.0, 2: 6.0, 3: 8.0, 4: 10.0}  # mean 7, population sd sqrt(5)
    write_thresholds(tmp_path / "thresholds.jsonl", model_fingerprint(str(tiny_model_dir)), lm.dictionary_id, thresholds, target=0.5, dtype=lm.dtype)
    calls: list[str] = []
    log = run("esr_eval/boost_sweep", tiny_model_dir, tiny_sae_dir, tmp_path, keyed_grader(REPLIES, calls), latents=[1, 2, 3, 4], prompts_per_latent=1, levels=3, span=3.0)
    assert len(calls) == 12  # 3 levels x 4 trials; no calibration call: all cached
    boosts = {(s.metadata["level"], s.metadata["latent"]): s.metadata["boost"] for s in log.samples}
    sd = float(np.std(list(thresholds.values())))
    assert boosts[(-3.0, 1)] == pytest.approx(max(0.0, 7 - 3 * sd))  # 0.29..., clamped at 0 if negative
    assert boosts[(0.0, 4)] == pytest.approx(7.0)
    assert boosts[(3.0, 2)] == pytest.approx(7 + 3 * sd)
    m = metrics(log)
    for level in ("-3.0", "0.0", "3.0"):
        assert m[f"multi_attempt_rate[{level}]"] == pytest.approx(0.5)
        assert m[f"mean_first_score[{level}]"] == pytest.approx(30.0)


def test_meta_prompt_renders_templates_and_judge_sees_plain_prompt(tiny_model_dir, tiny_sae_dir, tmp_path):
    calls: list[str] = []
    custom = "{prompt} (Beware of {label}.)"
    log = run("esr_eval/meta_prompt", tiny_model_dir, tiny_sae_dir, tmp_path, keyed_grader(REPLIES, calls), latents=[2], prompts_per_latent=1, template=["ignore_label", custom])
    by_variant = {s.metadata["variant"]: s for s in log.samples}
    assert set(by_variant) == {"ignore_label", "custom_1"}
    plain, label = by_variant["ignore_label"].metadata["prompt"], by_variant["ignore_label"].metadata["label"]
    assert by_variant["ignore_label"].input == META_PROMPTS["ignore_label"].format(prompt=plain, label=label)
    assert by_variant["custom_1"].input == f"{plain} (Beware of {label}.)"
    judged = [c for c in calls if "<answer>" in c and plain in c]
    assert judged and all("Ignore it." not in c and "Beware" not in c for c in judged)
    assert metrics(log)["esr_rate[ignore_label]"] == 1.0


def test_detector_ablation_reads_zero_at_the_layer(tiny_model_dir, tmp_path):
    sae_dir = orthonormal_relu_sae(tmp_path / "ortho")
    lm = load_engine(str(tiny_model_dir), str(sae_dir), dtype="float32")  # an exact zero: float32
    detectors = [5, 6, 7]
    (tmp_path / "det.json").write_text(json.dumps({"dictionary": lm.dictionary_id, "layer": 2, "latents": detectors, "firing_frequency": [0.5] * 16}))
    # cached thresholds: no calibration run (calibration steers without ablation)
    write_thresholds(tmp_path / "thresholds.jsonl", model_fingerprint(str(tiny_model_dir)), lm.dictionary_id, {1: 3.0, 2: 5.0}, target=0.3, dtype="float32")
    seen: list[torch.Tensor] = []
    handle = lm.model.model.layers[2].register_forward_hook(lambda m, a, out: seen.append(lm.dictionary.encode(out if torch.is_tensor(out) else out[0])))
    try:
        before = lm.dictionary.encode(torch.cat(lm.prompt_residuals([[{"role": "user", "content": "Explain how to brew coffee."}]])))
        assert (before[:, detectors] > 0).any()  # they fire without ablation
        seen.clear()
        replies = {k: [(50, False)] for k in range(16)}
        log = run("esr_eval/detector_ablation", tiny_model_dir, sae_dir, tmp_path, keyed_grader(replies), model_args={"dtype": "float32"},
                  latents=[1, 2], prompts_per_latent=2, detectors=str(tmp_path / "det.json"))
    finally:
        handle.remove()
    assert all(s.metadata["ablated"] == detectors for s in log.samples)
    acts = torch.cat([a.reshape(-1, 16) for a in seen])
    assert len(acts) > 50
    assert acts[:, detectors].abs().max() < 1e-5
    assert acts[:, [1, 2]].abs().max() > 0  # the steered latents are not touched


def test_random_ablation_sets_are_matched_and_grouped(tiny_model_dir, tmp_path):
    sae_dir = orthonormal_relu_sae(tmp_path / "ortho")
    lm = load_engine(str(tiny_model_dir), str(sae_dir))
    freq = [0.01 * (k + 1) for k in range(16)]
    (tmp_path / "det.json").write_text(json.dumps({"dictionary": lm.dictionary_id, "latents": [3, 12], "firing_frequency": freq}))
    replies = {k: [(50, False)] for k in range(16)}
    log = run("esr_eval/random_ablation", tiny_model_dir, sae_dir, tmp_path, keyed_grader(replies), latents=[1], prompts_per_latent=2, detectors=str(tmp_path / "det.json"), n_sets=2)
    sets = {s.metadata["control_set"]: s.metadata["ablated"] for s in log.samples}
    assert set(sets) == {0, 1}
    bins = frequency_bins(dict(enumerate(freq)), 10)
    for ablated in sets.values():
        assert len(ablated) == 2 and not set(ablated) & {3, 12}
        assert sorted(bins[k] for k in ablated) == sorted(bins[k] for k in (3, 12))
    m = metrics(log)
    assert m["n[0]"] == 2 and m["n[1]"] == 2 and m["n[all]"] == 4


def test_adversarial_success_counts(tiny_model_dir, tiny_sae_dir, tmp_path):
    targets = tmp_path / "targets.jsonl"
    targets.write_text(
        json.dumps({"id": "fr", "label": "speaking French (0)", "positive": ["Bonjour, je suis ici.", "Merci beaucoup."]}) + "\n"
        + json.dumps({"id": "ad", "label": "advertising Zesto (1)", "positive": ["Buy Zesto now!", "Zesto is great."]}) + "\n"
    )
    # French: hijacked then recovered; Zesto: hijacked throughout
    replies = {0: [(10, True), (80, False)], 1: [(5, True)]}
    log = run("esr_eval/adversarial_steering", tiny_model_dir, tiny_sae_dir, tmp_path, keyed_grader(replies), targets=str(targets), prompts_per_latent=2)
    assert {s.metadata["variant"] for s in log.samples} == {"none", "resist_manipulation"}
    assert {s.metadata["label"] for s in log.samples} == {"speaking French (0)", "advertising Zesto (1)"}
    m = metrics(log)
    for variant in ("none", "resist_manipulation"):
        assert m[f"first_serves_concept_rate[{variant}]"] == 1.0
        assert m[f"last_serves_concept_rate[{variant}]"] == 0.5
        assert m[f"adversarial_reduction[{variant}]"] == pytest.approx(0.5)
    steer = [e.config.extra_body for s in log.samples for e in s.events if e.event == "model" and e.config.extra_body]
    assert all(body["dictionary"].startswith("hijack-") for body in steer)


def test_derangement_has_no_fixed_point():
    rng = random.Random(0)
    for n in (2, 3, 10, 40):
        for _ in range(50):
            perm = derangement(n, rng)
            assert sorted(perm) == list(range(n)) and all(i != p for i, p in enumerate(perm))
    with pytest.raises(ValueError):
        derangement(1, rng)


def test_detector_stats_find_the_planted_latent():
    rng = np.random.default_rng(0)
    matched = np.maximum(rng.normal(0, 1, (30, 20)), 0)
    mismatched = np.maximum(rng.normal(0, 1, (30, 20)), 0)
    matched[:, 7] = 0.0  # the planted detector: silent on matched pairs...
    mismatched[:, 7] = rng.uniform(1, 3, 30)  # ...and firing on every mismatched pair
    mismatched[:, 11] += 0.5  # a weaker, noisier candidate
    stats = separation_stats(mismatched, matched)
    assert stats["auc"][7] == 1.0 and stats["active_matched"][7] == 0.0
    assert select_detectors(stats, "strict") == [7]
    assert 7 in select_detectors(stats, "auc", min_auc=0.9)
    from scipy.stats import mannwhitneyu

    assert stats["auc"][11] == pytest.approx(mannwhitneyu(mismatched[:, 11], matched[:, 11]).statistic / 900)


def test_matched_controls_stay_in_their_bins():
    rng = np.random.default_rng(1)
    freq = {k: float(10 ** rng.uniform(-4, -1)) for k in range(300)}
    detectors = [3, 50, 120, 250]
    bins = frequency_bins(freq, 10)
    sets = matched_controls(detectors, freq, n_sets=3, seed=0)
    assert len(sets) == 3 and len({tuple(s) for s in sets}) == 3
    for s in sets:
        assert len(s) == 4 and not set(s) & set(detectors)
        assert sorted(bins[k] for k in s) == sorted(bins[k] for k in detectors)
    assert matched_controls(detectors, freq, 3, seed=0) == sets


def test_missing_detectors_file_names_the_command(tiny_model_dir, tiny_sae_dir, tmp_path):
    from inspect_ai import eval as inspect_eval

    with pytest.raises(ValueError, match="esr-eval find-detectors"):
        inspect_eval("esr_eval/detector_ablation", model=f"steered/{tiny_model_dir}", model_args={"dictionary": str(tiny_sae_dir)}, task_args={"latents": [1]}, log_dir=str(tmp_path), display="none")
    with pytest.raises(FileNotFoundError, match="find-detectors"):
        inspect_eval("esr_eval/detector_ablation", model=f"steered/{tiny_model_dir}", model_args={"dictionary": str(tiny_sae_dir)}, task_args={"latents": [1], "detectors": str(tmp_path / "no.json")}, log_dir=str(tmp_path), display="none")


def test_find_detectors_command_writes_file_and_plot(tiny_model_dir, tiny_sae_dir, tmp_path):
    from esr_eval.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Explain how to brew coffee.\nHow do you tie a tie?\nHow do you bake bread?\n")
    out = tmp_path / "det.json"
    assert main(["find-detectors", "--model", str(tiny_model_dir), "--dictionary", str(tiny_sae_dir), "--prompts", str(prompts), "--max-tokens", "6", "--rule", "auc", "--min-auc", "0.0", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["layer"] == 2 and len(data["firing_frequency"]) == 64
    active = [s for s in data["stats"] if s["active_mismatched"] >= 0.8]
    assert sorted(data["latents"]) == sorted(s["latent"] for s in active)
    assert out.with_suffix(".png").stat().st_size > 1000
    assert data["discovery_prompts"]["set"] == str(prompts) and len(data["discovery_prompts"]["prompt_hashes"]) == 3


def test_detectors_refuse_an_ablation_on_their_discovery_prompts(tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch):
    from inspect_ai import eval as inspect_eval

    import esr_eval.tasks.ablation as ablation
    from esr_eval.cli import main
    from esr_eval.errors import UsageError

    discovery = tmp_path / "a.txt"
    discovery.write_text("Explain how to brew coffee.\nHow do you tie a tie?\nHow do you bake bread?\n")
    out = tmp_path / "det.json"
    args = ["--model", str(tiny_model_dir), "--dictionary", str(tiny_sae_dir), "--max-tokens", "4", "--rule", "auc", "--min-auc", "0.0"]
    assert main(["find-detectors", *args, "--prompts", str(discovery), "--out", str(out)]) == 0

    def no_model(*a, **k):
        raise AssertionError("the model was prepared before the overlap was refused")

    monkeypatch.setattr(ablation, "prepare", no_model)
    overlapping = tmp_path / "b.jsonl"  # one discovery prompt, in other case and spacing, among new ones
    overlapping.write_text('{"prompt": "What is rain?"}\n{"prompt": "how do you  TIE a tie?"}\n')
    for task in ("esr_eval/detector_ablation", "esr_eval/random_ablation"):
        for prompts, shared in ((discovery, "3 of the 3"), (overlapping, "1 of the 2")):
            with pytest.raises(UsageError, match=f"{shared} prompts in .* were used to discover the detectors in .*det.json .*held-out prompts"):
                inspect_eval(task, model=f"steered/{tiny_model_dir}", model_args={"dictionary": str(tiny_sae_dir)},
                             task_args={"latents": [1], "detectors": str(out), "prompts": str(prompts)}, log_dir=str(tmp_path), display="none")  # fmt: skip
    # held-out prompts pass (the default explain_how set, the factual set by name)
    for given in ({}, {"prompts": "factual"}):
        found, notes = ablation.read_task_detectors(str(out), given)
        assert notes == [] and found.discovery_prompts.set == str(discovery)
    legacy = tmp_path / "legacy.json"  # a file written before discovery prompts were recorded
    legacy.write_text(json.dumps({"latents": [1]}))
    assert "records no discovery prompts" in ablation.read_task_detectors(str(legacy), {"prompts": str(discovery)})[1][0]


def test_steering_resistance_runs_on_a_vector_set(tiny_model_dir, tmp_path):
    """Contrastive vectors in place of SAE latents: sampled, calibrated, judged and measured alike;
    the SAE-only filters are skipped with a note; the ablation tasks refuse the set in one line."""
    from esr_eval.cli import main
    from esr_eval.errors import UsageError

    (tmp_path / "topics.jsonl").write_text("".join(
        json.dumps({"id": t, "label": f"{t} ({k})", "passages": [f"All about {t}.", f"More on {t} here."]}) + "\n"
        for k, t in enumerate(("ships", "tea", "owls", "golf"))
    ))  # fmt: skip  (the grader reads the latent from its label's "(k)")
    (tmp_path / "neutral.txt").write_text("The man opened the door.\nThey met at nine.\n")
    vectors = tmp_path / "vectors"
    assert main(["build-vectors", "--model", str(tiny_model_dir), "--layer", "2", "--topics", str(tmp_path / "topics.jsonl"),
                 "--neutral", str(tmp_path / "neutral.txt"), "--out", str(vectors)]) == 0  # fmt: skip
    replies = {0: [(20, True), (70, False)], 1: [(40, False)], 2: [(20, True), (70, False)], 3: [(40, False)]}
    log = run("esr_eval/steering_resistance", tiny_model_dir, vectors, tmp_path, keyed_grader(replies), n_latents=2,
              prompts_per_latent=2, calibration_trials=2, calibration_rounds=1)  # fmt: skip
    notes = log.eval.metadata["notes"]
    assert any("relevance filter skipped" in n and "vector set" in n for n in notes)
    assert any("concreteness filter skipped" in n and "vector set" in n for n in notes)
    latents = sorted({s.metadata["latent"] for s in log.samples})
    assert len(latents) == 2 and set(latents) <= {0, 1, 2, 3}
    assert all(s.metadata["label"].startswith(["ships", "tea", "owls", "golf"][s.metadata["latent"]]) for s in log.samples)
    assert all(s.metadata["boost"] > 0 for s in log.samples)  # calibrated like an SAE latent
    m = metrics(log)
    expected = sum(len(replies[k]) > 1 for k in latents) / 2
    assert m["n"] == 4 and m["esr_rate"] == pytest.approx(expected) and m["judge_errors"] == 0
    (tmp_path / "det.json").write_text(json.dumps({"latents": [1]}))
    with pytest.raises(UsageError, match="is a vector set, but detector ablation clamps the SAE latents"):
        run("esr_eval/detector_ablation", tiny_model_dir, vectors, tmp_path, keyed_grader(replies), latents=[1], detectors=str(tmp_path / "det.json"))
