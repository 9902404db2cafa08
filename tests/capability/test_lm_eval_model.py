"""lm-eval model `esr-steered`: the packaged task runs offline and steering moves log-likelihoods."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from lm_eval.api.instance import Instance

from esr_eval.capability.lm_eval_model import TASK_DIR, SteeredHFLM, evaluate
from esr_eval.cli import main
from esr_eval.steering.hooks import BatchSteering
from esr_eval.steering.intervention import Intervention

REQUESTS = [("Question: What is the capital of France?\nAnswer:", " Paris"), ("The cat sat on the", " mat")]


def loglikelihoods(lm: SteeredHFLM) -> list[float]:
    instances = [
        Instance(request_type="loglikelihood", doc={}, arguments=args, idx=i) for i, args in enumerate(REQUESTS)
    ]
    return [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]


@pytest.fixture(scope="module")
def plain(tiny_lm) -> SteeredHFLM:
    return SteeredHFLM(engine=tiny_lm)


def manual_loglikelihood(engine, context: str, continuation: str, interventions) -> float:
    tok = engine.tokenizer
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([ctx + cont])
    steering = BatchSteering.build([interventions], engine.dictionary, torch.float32)
    with torch.no_grad(), engine.hooks.active(steering):
        logp = engine.model(ids).logits.log_softmax(-1)[0]
    return float(sum(logp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))


def test_packaged_task_has_forty_plus_four_choice_questions():
    rows = [json.loads(line) for line in (TASK_DIR / "esr_mc.jsonl").read_text().splitlines()]
    assert len(rows) >= 40 and len({r["question"] for r in rows}) == len(rows)
    assert all(len(r["choices"]) == 4 and 0 <= r["answer"] < 4 for r in rows)


def test_local_task_accuracy_is_the_argmax_of_choice_loglikelihoods(tiny_lm, plain):
    """lm-eval's acc on the packaged task equals the share of questions whose right choice has the
    highest log-likelihood, computed here with a plain forward pass."""
    results = evaluate(plain, limit=6)["results"]["esr_mc"]
    assert results["sample_len"] == 6
    rows = [json.loads(line) for line in (TASK_DIR / "esr_mc.jsonl").read_text().splitlines()][:6]
    right = 0
    for row in rows:
        context = f"Question: {row['question']}\nAnswer:"
        scores = [manual_loglikelihood(tiny_lm, context, f" {choice}", []) for choice in row["choices"]]
        right += int(max(range(4), key=scores.__getitem__) == row["answer"])
    assert results["acc,none"] == pytest.approx(right / 6)


def test_add_steering_changes_loglikelihoods_exactly_as_the_hook_does(tiny_lm, plain):
    base = loglikelihoods(plain)
    steered_lm = SteeredHFLM(engine=tiny_lm, latent=5, value=8)
    steered = loglikelihoods(steered_lm)
    assert all(abs(a - b) > 1e-3 for a, b in zip(base, steered))
    expected = [manual_loglikelihood(tiny_lm, c, x, [Intervention(5, 8.0)]) for c, x in REQUESTS]
    assert steered == pytest.approx(expected, abs=1e-4)
    assert loglikelihoods(plain) == pytest.approx(base, abs=1e-6)  # the hook is off again


def test_ablation_from_detectors_file(tiny_lm, plain, tmp_path):
    detectors = tmp_path / "detectors.json"
    latents = list(range(0, 64, 4))
    detectors.write_text(json.dumps({"model": "tiny", "dictionary": "sae", "layer": 2, "rule": "strict", "latents": latents, "stats": []}))
    ablated = loglikelihoods(SteeredHFLM(engine=tiny_lm, ablate=str(detectors)))
    expected = [manual_loglikelihood(tiny_lm, c, x, [Intervention(k, 0.0, "clamp") for k in latents]) for c, x in REQUESTS]
    assert ablated == pytest.approx(expected, abs=1e-4)
    assert ablated != pytest.approx(loglikelihoods(plain), abs=1e-4)
    detectors.write_text(json.dumps({"layer": 3, "latents": [1]}))
    with pytest.raises(ValueError, match="layer 3"):
        SteeredHFLM(engine=tiny_lm, ablate=str(detectors))


def test_steering_needs_a_valid_latent_and_detectors_file(tiny_lm):
    with pytest.raises(ValueError, match="outside dictionary"):
        SteeredHFLM(engine=tiny_lm, latent=999)
    with pytest.raises(FileNotFoundError, match="find-detectors"):
        SteeredHFLM(engine=tiny_lm, ablate="missing.json")


def test_capability_command_prints_conditions_side_by_side(tiny_model_dir, tiny_sae_dir, tmp_path, capsys):
    out = tmp_path / "capability.json"
    args = ["capability", "--model", str(tiny_model_dir), "--dictionary", str(tiny_sae_dir), "--latent", "5"]
    assert main([*args, "--limit", "4", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "plain" in table and "steered (latent 5 +8)" in table
    conditions = json.loads(out.read_text())["conditions"]
    assert list(conditions) == ["plain", "steered (latent 5 +8)"]
    assert all(c["esr_mc"]["sample_len"] == 4 for c in conditions.values())


def test_lm_eval_cli_wrapper_finds_the_model_and_task(tiny_model_dir, tiny_sae_dir, tmp_path):
    model_args = f"pretrained={tiny_model_dir},dictionary={tiny_sae_dir},latent=5,value=8"
    cmd = [sys.executable, "-m", "esr_eval.capability.lm_eval_model", "--model", "esr-steered", "--model_args", model_args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([*cmd, "--tasks", "esr_mc", "--limit", "3", "--device", "cpu"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "esr_mc" in done.stdout and "acc" in done.stdout


@pytest.mark.slow
def test_embedded_model_beats_chance_on_the_local_task():
    """SmolLM2-135M-Instruct answered 33 of 50 (0.66) when measured; chance is 0.25."""
    results = evaluate(SteeredHFLM(pretrained="smollm2-135m"))["results"]["esr_mc"]
    assert results["sample_len"] == 50
    assert results["acc,none"] >= 0.5


def test_an_engine_without_an_in_process_torch_model_names_the_backend_to_use():
    from esr_eval.steering.backends.vllm import VLLMEngine

    engine = VLLMEngine.__new__(VLLMEngine)  # no model loads: the interface's answer is enough
    for call in (engine.torch_model, lambda: engine.steered_forward([], 1)):
        with pytest.raises(NotImplementedError, match="engine=hf"):
            call()
