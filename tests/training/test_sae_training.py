"""`esr-eval train-sae` on the tiny model, the labelers, and (slow) the shipped SmolLM2 SAE."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from esr_eval.cli import main
from esr_eval.training.sae.labeling import (
    LatentExamples,
    TokenLabeler,
    build_labels,
    latent_stats,
    top_examples,
)

TINY_RUN = ["--layer", "2", "--width", "48", "--k", "4", "--tokens", "300", "--epochs", "8", "--batch-size", "32",
            "--lr", "0.01", "--dtype", "float32", "--max-new-tokens", "16", "--gen-batch", "16", "--ce-docs", "2"]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One tiny training run shared by the tests below (cache and output in a temp dir)."""
    root = tmp_path_factory.mktemp("train-sae")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESR_EVAL_CACHE", str(root / "cache"))
        out = root / "sae"
        assert main(["train-sae", "--model", str(tiny_model_dir), "--out", str(out), *TINY_RUN]) == 0
        yield out, root / "cache"


def test_train_sae_writes_a_loadable_labelled_sae(trained):
    from sae_lens import SAE

    from esr_eval.steering.dictionary import load_dictionary

    out, _ = trained
    d = load_dictionary(str(out))
    assert (d.layer, d.d_sae, d.d_model) == (2, 48, 32)
    sae = SAE.load_from_disk(str(out))
    assert sae.cfg.metadata.hook_name == "model.layers.2" and sae.cfg.k == 4
    assert torch.allclose(d.W_dec.norm(dim=-1), torch.ones(48), atol=1e-4)  # directions ship unit-norm
    stats = json.loads((out / "latent_stats.json").read_text())
    labels = json.loads((out / "labels.json").read_text())
    assert sorted(map(int, stats)) == list(range(48))
    alive = {k for k, s in stats.items() if s["frequency"] > 0}
    assert set(labels) == alive and all(labels.values())  # dead latents get no label
    assert all(s["max_activation"] > 0 for k, s in stats.items() if k in alive)
    record = json.loads((out / "training.json").read_text())
    assert record["quality"]["dead_fraction"] == pytest.approx(1 - len(alive) / 48)
    record = json.loads((out / "training.json").read_text())
    assert record["hook_name"] == "model.layers.2"
    assert record["command"].startswith("esr-eval train-sae --model ")
    assert json.loads((out / "cfg.json").read_text())["metadata"]["esr_eval_training"]["seed"] == 0


def test_written_explained_variance_matches_a_recomputation(trained, tiny_model_dir):
    from esr_eval.steering.backends.hf import HFEngine
    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.steering.models import load_causal_lm
    from esr_eval.training.sae.activations import collect, drop_outliers
    from esr_eval.training.sae.corpus import build_corpus
    from esr_eval.training.sae.recipe import corpus_spec
    from esr_eval.training.sae.trainer import quality

    out, cache = trained
    record = json.loads((out / "training.json").read_text())
    written = record["quality"]["heldout"]
    assert 0.0 <= written["explained_variance"] <= 1.0
    assert written["l0"] <= 4.0 and 0.0 <= written["dead_fraction"] <= 1.0
    args = argparse.Namespace(**record["arguments"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESR_EVAL_CACHE", str(cache))  # the cached corpus: no generation here
        model, tok = load_causal_lm(str(tiny_model_dir), dtype="float32")
        _, held_docs = build_corpus(HFEngine(model, tok, None, layer=2), corpus_spec(args), args.tokens)
    held, _ = drop_outliers(collect(model, held_docs, 2), args.max_norm_ratio, record["corpus"]["median_norm"])
    d = load_dictionary(str(out))
    again = quality(d.encode, d.decode, held.acts)
    assert again["n_tokens"] == written["n_tokens"] == record["corpus"]["tokens_heldout"]
    assert math.isclose(again["explained_variance"], written["explained_variance"], abs_tol=1e-4)


def test_label_sae_rebuilds_the_same_offline_labels_from_the_cache(trained, monkeypatch):
    out, cache = trained
    before = json.loads((out / "labels.json").read_text())
    (out / "labels.json").write_text("{}")
    monkeypatch.setenv("ESR_EVAL_CACHE", str(cache))
    assert main(["label-sae", "--sae", str(out)]) == 0
    assert json.loads((out / "labels.json").read_text()) == before


def test_layer_outside_the_model_fails_in_one_line_before_generating(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ESR_EVAL_CACHE", str(tmp_path / "cache"))
    args = ["--layer", "9", *TINY_RUN[2:]]
    assert main(["train-sae", "--model", str(tiny_model_dir), "--out", str(tmp_path / "sae"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--layer 9 is outside" in err and "0..3" in err
    assert not (tmp_path / "cache" / "sae_corpus").exists() and not (tmp_path / "sae").exists()


def test_bad_k_fails_before_loading(tmp_path, capsys):
    assert main(["train-sae", "--model", str(tmp_path / "nowhere"), "--layer", "1", "--width", "8", "--k", "8",
                 "--out", str(tmp_path / "sae")]) == 2
    assert "--k 8 must be between 1 and --width 8" in capsys.readouterr().err


def test_top_examples_counts_frequency_max_and_strongest_rows():
    acts = torch.tensor([[1.0, -1.0, 0.0], [3.0, -2.0, 0.5], [2.0, -1.0, 0.0], [0.0, -3.0, 0.0]])
    ex = top_examples(torch.relu, acts, d_sae=3, n_examples=2, batch=3)  # two batches
    assert ex.frequency.tolist() == [0.75, 0.0, 0.25]
    assert ex.max_activation.tolist() == [3.0, 0.0, 0.5]
    assert ex.top_rows[0].tolist() == [1, 2] and ex.top_rows[1].tolist() == [-1, -1]
    assert ex.top_rows[2].tolist() == [1, -1]
    stats = latent_stats(ex)
    assert stats["0"] == {"frequency": 0.75, "max_activation": 3.0} and stats["1"]["frequency"] == 0.0


def test_token_labels_join_top_tokens_and_distinctive_context(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = ["beans and coffee", "the cat sat", "the dog ran", "bread and water", "music and chess"]
    docs = [{"ids": tok(t)["input_ids"], "skip": 0} for t in texts]
    labeler = TokenLabeler(tok, docs)
    label = labeler.label(
        ["coffee", " Coffee", "espresso", " brew", "."],
        [5.0, 4.0, 3.0, 2.0, 1.0],
        ["I brew [[coffee]] from beans", "fresh [[espresso]] beans", "the [[brew]] is hot"],
    )
    assert label == "coffee, espresso, brew; context: beans"
    assert labeler.label(["."], [1.0], ["x"]) == "'.'"
    assert labeler.label(["\n", " is", "\n"], [2.0, 1.0, 2.0], []) == "'\\n', is"


def test_llm_labeler_writes_labels_for_live_latents_only(tiny_model_dir):
    from inspect_ai.model import ModelOutput, ModelUsage, get_model
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = [{"ids": tok("Explain how to brew coffee with hot water.")["input_ids"], "skip": 0}]
    outputs = []
    for text in ["Label: Coffee brewing.", '"hot water"\nbecause it fires on water']:
        out = ModelOutput.from_content("mockllm/model", text)
        out.usage = ModelUsage(input_tokens=1, output_tokens=1, total_tokens=2)
        outputs.append(out)
    model = get_model("mockllm/model", custom_outputs=outputs)
    examples = LatentExamples(
        frequency=torch.tensor([0.5, 0.0, 0.25]),
        max_activation=torch.tensor([2.0, 0.0, 1.0]),
        top_values=torch.tensor([[2.0, 1.0], [0.0, 0.0], [1.0, 0.0]]),
        top_rows=torch.tensor([[4, 5], [-1, -1], [7, -1]]),
    )
    positions = torch.arange(len(docs[0]["ids"]))
    labels = build_labels(tok, docs, torch.zeros_like(positions), positions, examples, labeler=model)
    assert labels == {0: "Coffee brewing", 2: "hot water"}


@pytest.mark.slow
def test_shipped_smollm2_sae_meets_the_bar_on_fresh_answers():
    """EV >= 0.8 on answers to prompts that are not in the training corpus (float32, as in the eval)."""
    from esr_eval.steering.backends.hf import HFEngine
    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.presets import get_preset
    from esr_eval.training.sae.activations import collect, drop_outliers
    from esr_eval.training.sae.trainer import quality

    folder = Path(get_preset("smollm2-135m").dictionary)
    record = json.loads((folder / "training.json").read_text())
    engine = HFEngine.load("smollm2-135m")
    prompts = ["How do lighthouses guide ships at night?", "What makes a good sourdough starter?",
               "Explain how a refrigerator keeps food cold.", "Give me tips for learning to juggle.",
               "Why do leaves change colour in autumn?", "How should I prepare for a long flight?"]
    requests = [GenerationRequest([{"role": "user", "content": p}], max_new_tokens=80, seed=i)
                for i, p in enumerate(prompts)]
    results = engine.generate(requests)
    skip = record["corpus"]["skip_positions"]
    docs = [{"ids": engine.prompt_ids(r.messages) + res.token_ids[: len(res.token_ids) - (res.stop_reason == "stop")],
             "skip": skip} for r, res in zip(requests, results)]
    acts = collect(engine.model, docs, engine.layer)
    acts, _ = drop_outliers(acts, record["arguments"]["max_norm_ratio"], record["corpus"]["median_norm"])
    q = quality(engine.dictionary.encode, engine.dictionary.decode, acts.acts)
    assert q["explained_variance"] >= 0.8, q
    assert record["quality"]["dead_fraction"] < 0.05


def test_corpus_prompts_are_every_topic_template_pair_in_a_seeded_order():
    from esr_eval.training.sae.corpus import PROMPTS_FILE, corpus_prompts

    data = json.loads(PROMPTS_FILE.read_text())
    prompts = corpus_prompts(0)
    assert len(prompts) == len(set(prompts)) == len(data["topics"]) * len(data["templates"]) >= 3000
    assert prompts == corpus_prompts(0) and prompts != corpus_prompts(1)


def test_pydoc_documents_are_bos_led_chunks_with_the_asked_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    from esr_eval.training.sae.corpus import MIN_SKIP, pydoc_documents

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    docs = pydoc_documents(tok, 1000, chunk=64)
    kept = sum(len(d["ids"]) - d["skip"] for d in docs)
    assert 1000 <= kept < 1000 + 64
    assert all(d["ids"][0] == tok.bos_token_id and d["skip"] == MIN_SKIP and len(d["ids"]) <= 65 for d in docs)
