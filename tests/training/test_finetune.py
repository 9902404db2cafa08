"""Self-correction data (segments, masks, mixing ratio) and LoRA training with a merge."""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import torch

from esr_eval.cli import main
from esr_eval.config import LoraSettings
from esr_eval.files import read_jsonl
from esr_eval.schema import FinetuneInfo
from esr_eval.training.finetune.data import (
    OffTopicBank,
    RowPlan,
    correction_count,
    encode_row,
    eval_prompts,
    make_row,
    plan_rows,
    training_prompts,
)
from esr_eval.training.finetune.train import (
    load_base,
    mean_loss,
    merge_and_save,
    split_rows,
    train_lora,
)

PROMPTS = ["Explain how to brew coffee.", "How do you tie a tie?", "How does bread rise?"]


@pytest.fixture(scope="module")
def bank() -> OffTopicBank:
    return OffTopicBank.load()


def correction_plan(bank: OffTopicBank) -> RowPlan:
    rng = random.Random(3)
    subject = bank.subjects[0]
    return RowPlan("r0", PROMPTS[0], 1, True, subject, bank.recovery_lines[0], bank.passage(subject, rng))


def test_packaged_bank_has_many_subjects_and_phrasings(bank):
    assert len(bank.subjects) >= 50
    assert len({s["name"] for s in bank.subjects}) == len(bank.subjects)
    assert len(set(bank.recovery_lines)) >= 20
    assert all(len(s["facts"]) >= 2 for s in bank.subjects)


def test_training_prompts_exclude_evaluation_prompts(tmp_path):
    held_out = eval_prompts()
    packaged = training_prompts(None)
    assert len(packaged) >= 50 and not {p.lower() for p in packaged} & held_out
    mixed = tmp_path / "p.jsonl"
    mixed.write_text("\n".join(json.dumps({"prompt": p}) for p in ["Brand new question?", *sorted(held_out)[:2]]))
    assert training_prompts(mixed) == ["Brand new question?"]


@pytest.mark.parametrize(("n", "ratio", "expected"), [(7, 0.5, 4), (10, 0.3, 3), (9, 0.0, 0), (9, 1.0, 9), (5, 0.1, 1), (4, 0.1, 0)])
def test_mixing_ratio_is_exact(bank, n, ratio, expected):
    assert correction_count(n, ratio) == expected
    plans = plan_rows(PROMPTS, n, ratio, bank, seed=1)
    assert sum(p.correction for p in plans) == expected
    assert [p.prompt for p in plans[:3]] and {p.prompt for p in plans} <= set(PROMPTS)
    assert all((p.off_topic is not None) == p.correction for p in plans)


def test_bad_ratio_is_refused(bank):
    with pytest.raises(ValueError, match="between 0 and 1"):
        plan_rows(PROMPTS, 10, 1.5, bank)


def test_masks_cover_exactly_prompt_and_off_topic(tiny_lm, bank):
    tok = tiny_lm.tokenizer
    row = make_row(correction_plan(bank), "Heat water, add the grounds, wait four minutes and press.")
    enc = encode_row(tok, row, max_length=10_000)
    ids, labels = enc["input_ids"], enc["labels"]
    prompt = tiny_lm.prompt_ids(row["messages"][:1])  # what the engine feeds at evaluation time
    off_topic = tok(row["segments"][0]["text"], add_special_tokens=False)["input_ids"]
    masked = len(prompt) + len(off_topic)
    assert ids[: len(prompt)] == prompt
    assert ids[len(prompt) : masked] == off_topic
    assert labels[:masked] == [-100] * masked
    assert labels[masked:] == ids[masked:] and -100 not in labels[masked:]
    trained_text = tok.decode(ids[masked:])
    assert trained_text.startswith("\n\n" + row["segments"][1]["text"].strip())
    assert trained_text.endswith("press.<|im_end|>\n")  # the end of turn is learned too
    assert row["messages"][1]["content"] == "".join(s["text"] for s in row["segments"])


def test_normal_row_masks_only_the_prompt(tiny_lm):
    row = make_row(RowPlan("n0", PROMPTS[1], 2, False), "Cross the wide end over the narrow end.")
    enc = encode_row(tiny_lm.tokenizer, row)
    n_prompt = len(tiny_lm.prompt_ids(row["messages"][:1]))
    assert enc["labels"][:n_prompt] == [-100] * n_prompt
    assert enc["labels"][n_prompt:] == enc["input_ids"][n_prompt:]
    assert [s["part"] for s in row["segments"]] == ["answer"]


def test_make_finetune_data_cli_writes_rows_with_the_models_answers(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    out = tmp_path / "data.jsonl"
    args = ["make-finetune-data", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--n", "7"]
    assert main([*args, "--ratio", "0.5", "--out", str(out), "--max-tokens", "6", "--dtype", "float32"]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 7 and sum(r["kind"] == "correction" for r in rows) == 4
    for row in rows:
        assert row["messages"][0]["content"] in PROMPTS
        parts = [s["part"] for s in row["segments"]]
        assert parts == (["off_topic", "recovery", "answer"] if row["kind"] == "correction" else ["answer"])
        assert [s["train"] for s in row["segments"]] == [p != "off_topic" for p in parts]
        assert row["messages"][1]["content"] == "".join(s["text"] for s in row["segments"])
    assert main([*args, "--ratio", "2", "--out", str(tmp_path / "bad.jsonl")]) == 2
    assert not (tmp_path / "bad.jsonl").exists()


def test_several_ratios_share_the_models_answers(tiny_model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS))
    out = tmp_path / "mix.jsonl"
    args = ["make-finetune-data", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--n", "6"]
    assert main([*args, "--ratio", "0", "0.5", "1", "--out", str(out), "--max-tokens", "5", "--dtype", "float32"]) == 0
    sets = {r: read_jsonl(tmp_path / f"mix-r{r}.jsonl") for r in ("00", "50", "100")}
    assert [sum(row["kind"] == "correction" for row in rows) for rows in sets.values()] == [0, 3, 6]
    answers = {r: [row["segments"][-1]["text"].strip() for row in rows] for r, rows in sets.items()}
    assert answers["00"] == answers["50"] == answers["100"]
    assert [row["messages"][0]["content"] for row in sets["00"]] == [row["messages"][0]["content"] for row in sets["100"]]


def test_writer_model_writes_the_off_topic_passages(bank):
    from inspect_ai.model import ModelOutput, ModelUsage, get_model

    from esr_eval.training.finetune.data import write_passages

    def reply(input, tools, tool_choice, config):
        subject = input[0].text.split("about ", 1)[1].split(".", 1)[0]
        out = ModelOutput.from_content("mockllm/model", f"All about {subject}.")
        out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        return out

    plans = plan_rows(PROMPTS, 6, 0.5, bank, seed=2)
    write_passages(get_model("mockllm/model", custom_outputs=reply, memoize=False), plans)
    for plan in plans:
        if plan.correction:
            assert plan.off_topic == f"All about {plan.subject['name']}."
        else:
            assert plan.off_topic is None


def test_split_rows_validation_share():
    rows = [{"id": i} for i in range(120)]
    train, val = split_rows(rows, 0.05, seed=0)
    assert len(val) == 6 and len(train) == 114
    assert sorted(r["id"] for r in train + val) == list(range(120))
    assert len(split_rows(rows[:3], 0.05, 0)[1]) == 0


def test_lora_lowers_loss_and_merged_model_loads_in_provider(tiny_model_dir, tiny_sae_dir, tmp_path, bank):
    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.load import load_engine

    model, tok, chat = load_base(str(tiny_model_dir))
    plans = plan_rows(PROMPTS, 8, 0.5, bank, seed=0)
    rows = [make_row(p, "Boil water, then pour it over the grounds.") for p in plans]
    encoded = [encode_row(tok, r) for r in rows]
    before = mean_loss(model, encoded, tok.pad_token_id)
    settings = LoraSettings(rank=8, lr=1e-2, epochs=20, max_steps=8, batch_size=4, micro_batch_size=2, warmup_steps=0, val_fraction=0.0)
    peft_model, metrics = train_lora(model, tok, rows, settings, chat, progress=False)
    after = mean_loss(peft_model, encoded, tok.pad_token_id)
    assert after < before - 0.05  # a random 300-token model starts near ln(300) = 5.70
    assert metrics["optimizer_steps"] == 8 and len(metrics["step_losses"]) == 8
    assert metrics["step_losses"][-1] < metrics["step_losses"][0]
    assert metrics["correction_rows"] == 4 and metrics["mixing_ratio"] == 0.5
    assert metrics["settings"]["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]

    out = merge_and_save(peft_model, tok, tmp_path / "tuned", metrics)
    saved = json.loads((out / "finetune_metrics.json").read_text())
    assert saved["step_losses"] == metrics["step_losses"]
    summary = FinetuneInfo.of_model(str(out))
    assert summary.mixing_ratio == 0.5 and summary.optimizer_steps == 8 and summary.correction_rows == 4
    assert FinetuneInfo.of_model(str(tiny_model_dir)) is None
    engine = load_engine(str(out), dictionary=str(tiny_sae_dir))
    assert mean_loss(engine.model, encoded, tok.pad_token_id) == pytest.approx(after, abs=1e-4)
    [result] = engine.generate([GenerationRequest([{"role": "user", "content": PROMPTS[0]}], max_new_tokens=5, seed=0)])
    assert result.completion_tokens >= 1


def test_finetune_cli_end_to_end(tiny_model_dir, tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [make_row(p, "Mix flour and water.") for p in plan_rows(PROMPTS, 10, 0.5, OffTopicBank.load(), seed=4)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "tuned"
    args = ["finetune", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out)]
    assert main([*args, "--epochs", "2", "--rank", "4", "--batch-size", "4", "--val-fraction", "0.2"]) == 0
    metrics = json.loads((out / "finetune_metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["val_rows"] == 2 and metrics["train_rows"] == 8 and metrics["optimizer_steps"] == 4
    assert all(e["val_loss"] is not None and e["train_loss"] > 0 for e in metrics["epochs"])
    assert (out / "config.json").exists() and (out / "tokenizer_config.json").exists()
    assert main(["finetune", "--model", str(tiny_model_dir), "--data", str(tmp_path / "none.jsonl"), "--out", str(out)]) == 2
    card = (out / "README.md").read_text()
    assert hashlib.sha256(data.read_bytes()).hexdigest() in card and "| 2 | 2 |" in card  # data hash, epoch 2's row
    assert not (tmp_path / "tuned.checkpoint").exists()  # the epoch checkpoint goes once the model is written


def test_a_run_stopped_after_an_epoch_resumes_to_the_same_adapter(tiny_model_dir, tmp_path, monkeypatch):
    """A long run in pieces: stopped after its first epoch's checkpoint, `--resume` ends with the
    same adapter weights, losses and step count as the run that never stopped (dropout on)."""
    from safetensors.torch import load_file

    import esr_eval.training.finetune.train as train

    data = tmp_path / "data.jsonl"
    rows = [make_row(p, "Mix flour and water.") for p in plan_rows(PROMPTS, 12, 0.5, OffTopicBank.load(), seed=5)]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    args = ["finetune", "--model", str(tiny_model_dir), "--data", str(data), "--epochs", "3", "--rank", "4", "--batch-size", "4",
            "--dropout", "0.2", "--val-fraction", "0.2", "--adapter-only", "--lr", "1e-2"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0

    real_save = train.save_checkpoint

    def save_then_stop(*a, **k):
        real_save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "save_checkpoint", save_then_stop)
    assert main([*args, "--out", str(tmp_path / "pieces")]) == 130  # stopped (Ctrl-C) after epoch 1
    monkeypatch.setattr(train, "save_checkpoint", real_save)
    assert not (tmp_path / "pieces").exists() and (tmp_path / "pieces.checkpoint" / train.CHECKPOINT_STATE).exists()
    assert main([*args[:-1], "2e-2", "--out", str(tmp_path / "pieces"), "--resume"]) == 2  # other settings: refused
    assert main([*args, "--out", str(tmp_path / "pieces"), "--resume"]) == 0

    whole, pieces = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("whole", "pieces"))
    assert whole.keys() == pieces.keys()
    for name in whole:
        assert torch.equal(whole[name], pieces[name]), name
    a, b = (json.loads((tmp_path / d / "finetune_metrics.json").read_text()) for d in ("whole", "pieces"))
    assert a["step_losses"] == b["step_losses"] and a["epochs"] == b["epochs"] and b["optimizer_steps"] == 9
    assert main([*args, "--out", str(tmp_path / "other"), "--resume"]) == 2  # nothing to resume from
