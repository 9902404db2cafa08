"""Concept labels and the offline concreteness filter on an SAE with planted latents: three fire
on punctuation, a function word and digits everywhere, two on the words of coffee and volcano
texts, one on words of texts that share no topic, one never."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from esr_eval.training.sae.concepts import (
    ConceptStats,
    coherence,
    concept_label,
    load_vocabulary,
    token_kind,
)

COFFEE = [
    "I grind the coffee beans fresh every morning before brewing espresso.",
    "A french press makes strong coffee: steep the grounds for 4 minutes, then press.",
    "Baristas steam milk to pour latte art on top of a double espresso shot.",
    "Cold brew coffee steeps in cold water overnight, which gives it a smooth taste.",
    "Arabica coffee beans are roasted until they turn dark brown and oily.",
    "The cafe serves cappuccino, americano and filter coffee with fresh pastries.",
    "Use 15 grams of ground coffee for every 250 ml of hot water in a pour-over.",
    "Decaf coffee still has a little caffeine, so the espresso may keep you awake.",
]
VOLCANO = [
    "The volcano erupted, sending lava and ash high into the sky.",
    "Magma rises from deep in the earth and cools into volcanic rock.",
    "Mount Etna in Sicily is one of the most active volcanoes in Europe.",
    "Pyroclastic flows of hot gas and ash rush down the slopes of the volcano.",
    "Hawaii was built by volcanic eruptions, and lava still flows on the Big Island.",
    "Scientists measure earthquakes and gas to predict when a volcano will erupt.",
    "In 79 AD the eruption of Vesuvius buried the city of Pompeii in ash.",
    "A dormant volcano can wake after 1000 years, with a crater full of lava.",
]
ASSORTED = [
    "The stock market fell sharply on Monday as investors worried about interest rates.",
    "She practised the violin for 3 hours before the concert in the town hall.",
    "The football team won the championship after a tense penalty shootout.",
    "My grandmother planted tomatoes, beans and carrots in her garden.",
    "The new smartphone has a larger battery and a brighter screen.",
    "Antibiotics do not work against viruses, such as the flu or a cold.",
    "The train to Paris was delayed by 2 hours because of a signal failure.",
    "He fixed the leaky faucet in the bathroom with a wrench and some tape.",
]
# planted latents: 0 ',' everywhere, 1 'the' everywhere, 2 digits everywhere, 3 coffee words,
# 4 volcano words, 5 words of the assorted texts, 6 never fires
TOKEN_LEVEL, TOPICAL, NO_TOPIC, DEAD = (0, 1, 2), (3, 4), 5, 6
from esr_eval.training.sae.concepts import FUNCTION_WORDS as FUNCTION  # noqa: E402


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((COFFEE + VOLCANO + ASSORTED) * 3, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>")


def _planted_features(tokenizer, docs: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 'residual' per position: one feature per planted latent, 1 + jitter where it fires."""
    rows, doc_index, positions = [], [], []
    gen = torch.Generator().manual_seed(0)
    for d, doc in enumerate(docs):
        for pos in range(doc["skip"], len(doc["ids"])):
            word = tokenizer.decode(doc["ids"][pos : pos + 1])
            x = torch.zeros(7)
            plain = word.strip().lower()
            if plain == ",":
                x[0] = 1
            elif plain == "the":
                x[1] = 1
            elif plain.isdigit():
                x[2] = 1
            elif plain.isalpha() and len(plain) > 3 and word.startswith(" ") and plain not in FUNCTION:
                x[{"coffee": 3, "volcano": 4, "assorted": 5}[doc["topic"]]] = 1
            rows.append(x * (1 + 0.1 * torch.rand(1, generator=gen)))
            doc_index.append(d)
            positions.append(pos)
    return torch.stack(rows), torch.tensor(doc_index), torch.tensor(positions)


def _planted_sae(folder):
    """A sae-lens SAE whose latent k reads feature k (latent 6 reads nothing: dead)."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    sae = StandardSAE(StandardSAEConfig(d_in=7, d_sae=7, metadata=SAEMetadata(hook_name="model.layers.0")))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(7))
        sae.W_enc[6, 6] = 0.0
        sae.b_enc.fill_(-0.5)
        sae.b_dec.zero_()
        sae.W_dec.copy_(torch.eye(7))
    sae.save_model(folder)
    return sae


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.training.sae.labeling import label_latents, latent_stats, top_examples

    tokenizer = _tokenizer()
    docs = [{"ids": [tokenizer.bos_token_id] + tokenizer(t, add_special_tokens=False)["input_ids"], "skip": 1,
             "topic": topic}
            for topic, texts in (("coffee", COFFEE), ("volcano", VOLCANO), ("assorted", ASSORTED)) for t in texts]
    acts, doc_index, positions = _planted_features(tokenizer, docs)
    folder = tmp_path_factory.mktemp("planted") / "sae"
    sae = _planted_sae(folder)
    examples = top_examples(lambda x: sae.encode(x), acts, 7, n_examples=64)
    labels, concepts = label_latents(tokenizer, docs, doc_index, positions, examples)
    (folder / "labels.json").write_text(json.dumps({str(k): v for k, v in labels.items()}))
    (folder / "latent_stats.json").write_text(json.dumps(latent_stats(examples, concepts)))
    return load_dictionary(str(folder)), labels, concepts


def test_planted_latents_get_concept_stats_that_tell_them_apart(planted):
    _, labels, concepts = planted
    assert sorted(concepts) == [0, 1, 2, 3, 4, 5]  # the dead latent has none
    for k in TOKEN_LEVEL:
        assert concepts[k].token_share == 1.0, (k, concepts[k])
    for k in (*TOPICAL, NO_TOPIC):
        assert concepts[k].token_share == 0.0, (k, concepts[k])
        assert concepts[k].n_contexts == 8  # one window per document
    assert min(concepts[k].coherence for k in TOPICAL) > concepts[NO_TOPIC].coherence + 0.2
    assert "coffee" in concepts[3].topic or "espresso" in concepts[3].topic, concepts[3]
    assert "volcan" in concepts[4].topic, concepts[4]
    assert (labels[3], labels[4]) == (concepts[3].topic, concepts[4].topic)  # topical: named by the topic
    assert labels[0].startswith("','") and labels[2].startswith("'")  # token-level: named by its tokens
    assert 6 not in labels


def test_offline_filter_keeps_only_the_topical_latents(planted):
    from esr_eval.errors import UsageError
    from esr_eval.sampling.latents import offline_concreteness, sample_latents

    dictionary, _, _ = planted
    lm = SimpleNamespace(dictionary=dictionary)
    keep = offline_concreteness(dictionary)
    assert keep is not None
    assert [keep(k) for k in range(6)] == ["token_level"] * 3 + [None, None, "no_topic"]
    sample = sample_latents(lm, 2, [], seed=0, concreteness=keep)
    assert sample.latents == [3, 4]
    # seed 0's first round draws six of the seven latents (3 x 2), all but the dead one
    assert sample.dropped == {"unlabelled": 0, "dead": 0, "relevant": 0, "token_level": 3, "no_topic": 1}
    with pytest.raises(UsageError, match="only 2 latents pass"):
        sample_latents(lm, 3, [], seed=0, concreteness=keep)
    assert len(sample_latents(lm, 6, [], seed=0).latents) == 6  # without the filter every labelled latent


def test_task_default_reads_the_filter_and_notes_when_stats_lack_it(planted, tiny_sae_dir):
    from esr_eval.config import TaskArgs
    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.tasks.task_setup import concreteness_filter

    dictionary, _, _ = planted
    assert TaskArgs().concreteness == "offline"
    keep, note = concreteness_filter("offline", dictionary)
    assert keep is not None and keep(3) is None and note is None
    keep, note = concreteness_filter("none", dictionary)
    assert keep is None and "off" in note
    keep, note = concreteness_filter("offline", load_dictionary(str(tiny_sae_dir)))  # no latent_stats.json
    assert keep is None and "esr-eval label-sae" in note
    assert TaskArgs.parse({"concreteness": "off"}, "t").concreteness == "none"


@pytest.mark.parametrize(
    ("piece", "before", "kind"),
    [
        (":", "def f()", "punctuation"),
        ("\n\n", "end.", "punctuation"),
        (" 42", "about", "digit"),
        ("5", "", "digit"),
        (" the", "over", "function word"),
        (" Their", "and", "function word"),
        (" x", "let", "function word"),  # a single letter
        ("ing", " brew", "piece"),  # continues the word before it
        (" espresso", "an", None),
        ("Coffee", "\n", None),  # a word that starts a line
    ],
)
def test_token_kinds(piece: str, before: str, kind: str | None) -> None:
    assert token_kind(piece, before) == kind


def test_coherence_is_the_mean_pairwise_cosine() -> None:
    import numpy as np

    same = np.tile(np.array([[1.0, 0.0]]), (4, 1))
    assert coherence(same) == pytest.approx(1.0)
    orthogonal = np.eye(4)
    assert coherence(orthogonal) == pytest.approx(0.0)
    two = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # 2 of 6 pairs alike
    assert coherence(two) == pytest.approx(2 / 6)
    assert coherence(np.eye(2)) == 0.0  # too few contexts to say


def test_concept_label_rules() -> None:
    topical = ConceptStats(0.6, 0.1, "coffee brewing", 0.7, 10)
    assert concept_label(topical, "beans, grind") == "coffee brewing"
    assert concept_label(ConceptStats(0.6, 0.9, "Python syntax", 0.5, 10), "':'") == "':' (in Python syntax)"
    assert concept_label(ConceptStats(0.1, 0.0, "money", 0.2, 10), "personal") == "personal"


def test_shipped_vocabulary_is_a_list_of_distinct_topics() -> None:
    topics = load_vocabulary()
    assert 500 <= len(topics) == len(set(topics)) <= 3000
    assert all(t == t.strip() and not t.startswith("#") for t in topics)


def test_latents_sampled_lists_what_the_task_samples(tiny_model_dir, tmp_path, capsys):
    from helpers import write_random_sae

    from esr_eval.cli import main
    from esr_eval.sampling.latents import sample_latents
    from esr_eval.sampling.prompts import load_prompts
    from esr_eval.steering.load import load_engine

    sae = write_random_sae(tmp_path / "sae", d_sae=256)  # wider than the relevance filter's top 100
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Explain how to brew tea.\n")
    args = ["latents", "--sampled", "--model", str(tiny_model_dir), "--dictionary", str(sae), "--n-latents", "3",
            "--seed", "4", "--prompts", str(prompts)]
    assert main(args) == 0
    out = capsys.readouterr().out
    engine = load_engine(str(tiny_model_dir), str(sae))
    messages = [[{"role": "user", "content": p.text}] for p in load_prompts(str(prompts))]
    expected = sample_latents(engine, 3, messages, seed=4).latents
    rows = [line for line in out.splitlines() if line.count("│") >= 2 and ")" in line]
    assert [int(r.split("│")[1]) for r in rows] == expected  # a random SAE has no concept stats: no filter
    assert all(engine.dictionary.label(k) in out for k in expected)


def test_labels_from_part_of_the_corpus_keep_the_whole_corpus_stats(tmp_path):
    from esr_eval.training.sae.recipe import _merge_partial

    (tmp_path / "labels.json").write_text(json.dumps({"0": "old zero", "1": "old one", "2": "old two"}))
    (tmp_path / "latent_stats.json").write_text(json.dumps({
        "0": {"frequency": 0.5, "max_activation": 9.0}, "1": {"frequency": 0.01, "max_activation": 3.0},
        "2": {"frequency": 0.0, "max_activation": 0.0}}))
    fresh = {"0": {"frequency": 0.4, "max_activation": 7.0, "coherence": 0.6, "token_share": 0.0, "topic": "tea"},
             "1": {"frequency": 0.0, "max_activation": 0.0}, "2": {"frequency": 0.0, "max_activation": 0.0}}
    labels, stats = _merge_partial(tmp_path, {0: "tea"}, fresh)
    assert labels == {0: "tea", 1: "old one", 2: "old two"}  # latent 1 did not fire in the part
    assert stats["0"] == {"frequency": 0.5, "max_activation": 9.0, "coherence": 0.6, "token_share": 0.0, "topic": "tea"}
    assert stats["1"] == {"frequency": 0.01, "max_activation": 3.0}  # no concept stats: the filter drops it
