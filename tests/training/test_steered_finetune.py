"""Steering-aware self-correction fine-tuning: rows carry their steering, the training forward
applies it, the adapters leave the steered layer alone, and evaluations never reuse its latents."""

from __future__ import annotations

import json
import random

import pytest
import torch

from esr_eval.config import LoraSettings, SteeredDataSettings
from esr_eval.steering.intervention import Intervention
from esr_eval.training.finetune.steered import (
    Generated,
    RecoveryGrammar,
    make_row,
    plan_steered_rows,
    row_interventions,
    select_rows,
)
from esr_eval.training.finetune.train import (
    TrainingSteering,
    collate,
    encode_rows,
    mean_loss,
    train_lora,
)

PROMPTS = ["Explain how to brew coffee.", "How do you tie a tie?", "How does bread rise?", "Explain how tides work."]
SETTINGS = SteeredDataSettings(n=40, correction_share=0.5, steered_share=0.25, n_latents=3, seed=3)


def test_recovery_lines_vary_and_read_as_sentences():
    grammar = RecoveryGrammar.load()
    lines = grammar.all()
    assert len(set(lines)) >= 2000
    assert grammar.join("Wait.", "this has nothing to do with what you asked.", "Let me start again.") == (
        "Wait. This has nothing to do with what you asked. Let me start again."
    )
    assert grammar.join("Okay,", "this went wrong.", "Back to your question.").startswith("Okay, this")
    rng = random.Random(0)
    assert len({grammar.sample(rng) for _ in range(200)}) >= 150  # no phrasing dominates


def test_plans_oversample_the_steered_kinds_within_their_boost_ranges():
    scales = {4: 100.0, 9: 50.0, 11: 80.0}
    plans = plan_steered_rows(PROMPTS, [4, 9, 11], scales, SETTINGS)
    kinds = [p.kind for p in plans]
    assert kinds.count("correction") == 30 and kinds.count("steered") == 15 and kinds.count("normal") == 10
    for p in plans:
        if p.kind == "normal":
            assert p.interventions == [] and p.latent is None
            continue
        low, high = SETTINGS.derail_scale if p.kind == "correction" else SETTINGS.mild_scale
        assert low * scales[p.latent] - 1e-3 <= p.boost <= high * scales[p.latent] + 1e-3
        assert p.interventions == [Intervention(p.latent, p.boost)]
    corrections = [p for p in plans if p.kind == "correction"]
    assert all(SETTINGS.drift_tokens[0] <= p.drift_tokens <= SETTINGS.drift_tokens[1] for p in corrections)
    assert len({p.recovery for p in corrections}) >= 25
    assert plan_steered_rows(PROMPTS, [4, 9, 11], scales, SETTINGS) == plans  # seeded


def _generated(plans, scores: dict[str, tuple[float | None, int | None]]) -> list[Generated]:
    return [Generated(p, f"text of {p.id}", "The real answer.", *scores.get(p.kind, (None, None))) for p in plans]


def test_rows_are_kept_by_what_the_grader_saw():
    plans = plan_steered_rows(PROMPTS, [4, 9, 11], {4: 100.0, 9: 50.0, 11: 80.0}, SETTINGS)
    items = _generated(plans, {"correction": (0.2, 1), "steered": (0.8, 1)})
    for g in [g for g in items if g.plan.kind != "normal"][::3]:  # a third of the steered texts fail their test
        g.first_score = 0.9 if g.plan.kind == "correction" else 0.3
    chosen = select_rows(items, SETTINGS, "sae@2", 2)
    assert chosen.kept == {"correction": 20, "steered": 10, "normal": 10}
    assert chosen.generated == {"correction": 30, "steered": 15, "normal": 10}
    by_id = {g.plan.id: g for g in items}
    for row in chosen.rows:
        g = by_id[row["id"]]
        if row["kind"] != "normal":
            assert g.first_score < 0.5 if row["kind"] == "correction" else g.first_score >= 0.6
    multi = _generated(plans, {"correction": (0.2, 1), "steered": (0.9, 2)})  # a steered answer that restarted
    assert select_rows(multi, SETTINGS, "sae@2", 2).kept["steered"] == 0


def test_a_row_carries_the_steering_it_was_generated_with():
    plans = plan_steered_rows(PROMPTS, [4], {4: 100.0}, SETTINGS)
    correction = next(p for p in plans if p.kind == "correction")
    row = make_row(Generated(correction, "Volcanoes are hot and", "Grind the beans."), "sae@2", 2)
    assert row["steering"] == {"dictionary": "sae@2", "layer": 2, "interventions": [{"latent": 4, "value": correction.boost, "mode": "add"}]}
    assert row_interventions(row) == [Intervention(4, correction.boost)]
    assert [s["part"] for s in row["segments"]] == ["off_topic", "recovery", "answer"]
    assert [s["train"] for s in row["segments"]] == [False, True, True]
    assert row["segments"][1]["text"] == "... " + correction.recovery
    assert row["messages"][1]["content"] == "".join(s["text"] for s in row["segments"])
    normal = next(p for p in plans if p.kind == "normal")
    assert row_interventions(make_row(Generated(normal, "", "Grind the beans."), "sae@2", 2)) == []


def _rows(lm, n: int = 8) -> list[dict]:
    plans = plan_steered_rows(PROMPTS, [5], {5: 20.0}, SteeredDataSettings(n=n, correction_share=0.5, steered_share=0.25, seed=1))
    chosen = [p for kind, k in (("correction", n // 2), ("steered", n // 4), ("normal", n - n // 2 - n // 4)) for p in [q for q in plans if q.kind == kind][:k]]
    return [make_row(Generated(p, "Lava flows down the slope and", "Boil water and pour it."), lm.dictionary_id, lm.layer) for p in chosen]


def test_the_training_forward_applies_each_rows_steering_exactly(tiny_lm):
    rows = _rows(tiny_lm)
    encoded = encode_rows(tiny_lm.tokenizer, rows, 512, True)
    batch = collate(encoded, tiny_lm.tokenizer.pad_token_id)
    assert batch["interventions"] == [row_interventions(r) for r in rows]
    outputs: list[torch.Tensor] = []
    layer = tiny_lm.model.model.layers[tiny_lm.layer]
    steering = TrainingSteering.attach(tiny_lm.model, tiny_lm.dictionary)
    handle = layer.register_forward_hook(lambda m, a, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    try:
        with torch.no_grad():
            tiny_lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            with steering.active(batch["interventions"], torch.float32):
                tiny_lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    finally:
        handle.remove()
        steering.hooks.remove()
    plain, steered = outputs
    for b, ivs in enumerate(batch["interventions"]):
        expected = sum((iv.value * tiny_lm.dictionary.W_dec[iv.latent] for iv in ivs), torch.zeros(plain.shape[-1]))
        torch.testing.assert_close(steered[b] - plain[b], expected.expand_as(plain[b]), atol=1e-5, rtol=1e-5)
    assert any(batch["interventions"]) and not all(batch["interventions"])


def test_steered_lora_learns_and_leaves_the_steered_layer_alone(tiny_model_dir, tiny_sae_dir, tmp_path):
    from esr_eval.schema import FinetuneInfo
    from esr_eval.steering.backends.hf import HFEngine
    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.steering.models import apply_adapter
    from esr_eval.training.finetune.train import load_base, save_adapter

    base = HFEngine.load(str(tiny_model_dir), dictionary=str(tiny_sae_dir), dtype="float32")  # as load_base trains
    rows = _rows(base, 8)
    model, tok, chat = load_base(str(tiny_model_dir))
    dictionary = load_dictionary(str(tiny_sae_dir))
    encoded = encode_rows(tok, rows, 512, chat)
    before = mean_loss(model, encoded, tok.pad_token_id, steering=TrainingSteering.attach(model, dictionary))
    settings = LoraSettings(rank=8, lr=2e-2, epochs=20, max_steps=12, batch_size=4, micro_batch_size=2, warmup_steps=0, val_fraction=0.0,
                            target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))  # fmt: skip
    peft_model, metrics = train_lora(model, tok, rows, settings, chat, progress=False, dictionary=dictionary)
    assert metrics["recipe"] == "steered self-correction" and metrics["training_latents"] == [5]
    assert metrics["settings"]["layers_to_transform"] == [3]  # the tiny model's only layer after layer 2
    trained = {name.split(".layers.")[1].split(".")[0] for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trained == {"3"}
    prompt = [[{"role": "user", "content": PROMPTS[0]}]]
    adapter = save_adapter(peft_model, tmp_path / "adapter", metrics)  # what a preset ships
    merged = peft_model.merge_and_unload()
    tuned = HFEngine(merged, tok, load_dictionary(str(tiny_sae_dir)))
    torch.testing.assert_close(tuned.prompt_residuals(prompt)[0], base.prompt_residuals(prompt)[0])
    after = mean_loss(merged, encoded, tok.pad_token_id, steering=TrainingSteering.attach(merged, dictionary))
    assert after < before - 0.05
    shipped = apply_adapter(load_base(str(tiny_model_dir))[0], adapter)
    ids = torch.tensor([tok("Explain how tides work.")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(shipped(input_ids=ids).logits, merged(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    assert FinetuneInfo.of_model(str(adapter)).training_latents == (5,)
    with pytest.raises(ValueError, match="pass the dictionary"):
        train_lora(load_base(str(tiny_model_dir))[0], tok, rows, settings, chat, progress=False)


def test_evaluation_latents_never_include_the_training_latents(tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch):
    import shutil

    from inspect_ai import eval as inspect_eval

    from esr_eval.errors import UsageError

    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_model_dir, tuned)
    (tuned / "finetune_metrics.json").write_text(json.dumps({"base_model": "tiny", "mixing_ratio": 0.5, "recipe": "steered self-correction", "training_latents": [1, 2, 3]}))
    common = dict(model=f"steered/{tuned}", model_args={"dictionary": str(tiny_sae_dir)}, log_dir=str(tmp_path / "logs"), display="none")
    with pytest.raises(UsageError, match=r"latents \[2\] were steered in this model's fine-tuning"):
        inspect_eval("esr_eval/steering_resistance", task_args={"latents": [2, 9]}, **common)
    # sampling skips them: the filters see them as taken (a tiny SAE has no unrelated latents to
    # offer, so the prompts' relevance filter is left out here)
    from esr_eval.sampling.latents import sample_latents
    from esr_eval.steering.load import load_engine

    lm = load_engine(str(tuned), str(tiny_sae_dir))
    drawn = sample_latents(lm, 20, [], seed=0, exclude=frozenset({1, 2, 3}))
    assert not set(drawn.latents) & {1, 2, 3} and drawn.dropped["trained on"] >= 1
    import esr_eval.tasks.task_setup as setup

    seen: dict = {}

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise UsageError("stop here")

    monkeypatch.setattr(setup, "sample_latents", spy)
    with pytest.raises(UsageError, match="stop here"):
        inspect_eval("esr_eval/no_steering", task_args={"n_latents": 2}, **common)
    assert seen["exclude"] == frozenset({1, 2, 3})


def test_make_steered_data_command_end_to_end(tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch):
    """With a grader that calls every drift derailed and every mild answer on topic."""
    import esr_eval.training.finetune.steered as steered
    from esr_eval.cli import main
    from esr_eval.files import read_jsonl

    def fake_grade(grader, items, labels):
        for g in items:
            g.first_score, g.n_attempts = (0.1, 1) if g.plan.kind == "correction" else (0.9, 1)

    monkeypatch.setattr(steered, "grade", fake_grade)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    out = tmp_path / "rows.jsonl"
    args = ["make-finetune-data", "--steered", "--model", str(tiny_model_dir), "--dictionary", str(tiny_sae_dir), "--prompts", str(prompts),
            "--n", "8", "--latents", "4,7", "--max-tokens", "6", "--drift-tokens", "3", "5", "--dtype", "float32", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    rows = read_jsonl(out)
    assert sorted(r["kind"] for r in rows) == ["correction"] * 4 + ["normal"] * 2 + ["steered"] * 2
    for row in rows:
        assert {iv.latent for iv in row_interventions(row)} <= {4, 7}
        assert bool(row_interventions(row)) == (row["kind"] != "normal")
    assert main([*args[:-2], "--mild-scale", "0.5", "0.9", "--out", str(tmp_path / "bad.jsonl")]) == 2
    assert not (tmp_path / "bad.jsonl").exists()
