"""The packaged judge-validation set: well-formed labels, real answers for the most part, halves
split by latent, and a test half whose phrasings no grader was built on."""

from __future__ import annotations

import json
from collections import Counter

from esr_eval.judge.restarts import (
    WEIGHTS_PATH,
    normalise,
    read_training_sentences,
    split_units,
)
from esr_eval.judge_tools.restart_training import (
    shares_recovery_sentence,
    training_units,
)
from esr_eval.judge_tools.validation_build import build
from esr_eval.judge_tools.validation_set import load_validation_set
from esr_eval.training.finetune.data import OffTopicBank

ROWS = load_validation_set(split="all")


def _phrases(rows, *kinds: str) -> set[str]:
    return {normalise(p) for row in rows for kind in kinds for p in getattr(row, kind)}


def test_size_origin_and_halves() -> None:
    real = [r for r in ROWS if not r.written]
    assert len(ROWS) >= 200 and len(real) > len(ROWS) / 2
    models = Counter(r.origin["model"] for r in real)
    assert set(models) == {"steered/smollm2-135m", "steered/gemma-3-270m"}
    for r in real:
        assert r.origin["latent"] is not None and r.origin["boost"] is not None and r.origin["seed"] is not None
    splits = Counter(r.split for r in ROWS)
    assert abs(splits["dev"] - splits["test"]) <= len(ROWS) // 10
    assert len({r.id for r in ROWS}) == len(ROWS)
    multi = Counter(r.split for r in ROWS if r.multi_attempt)
    assert multi["dev"] >= 30 and multi["test"] >= 30


def test_labels_are_consistent() -> None:
    for r in ROWS:
        assert r.problems() == [], r.id
        for a, b in zip(r.attempts, r.attempts[1:]):
            assert r.answer[a.end : b.start].strip() == "", r.id  # attempts tile the answer
        if r.attempts:
            assert r.attempts[0].start == 0 and r.answer[r.attempts[-1].end :].strip() == ""
        for phrase, attempt in zip(r.restart_phrases, r.attempts[1:]):
            assert r.answer[attempt.start : attempt.restart_end] == phrase, r.id


def test_the_shipped_file_is_what_the_sources_build() -> None:
    assert [r.to_dict() for r in build()] == [r.to_dict() for r in ROWS]


def test_real_answers_split_by_latent() -> None:
    halves: dict[tuple, set[str]] = {}
    for r in ROWS:
        if not r.written:
            halves.setdefault((r.origin["model"], r.origin["latent"]), set()).add(r.split)
    assert all(len(s) == 1 for s in halves.values())


def test_test_phrasings_build_no_grader() -> None:
    """The restart and trap phrasings of the test half appear neither in the dev half nor in the
    grader's training sentences, not even inside a longer phrase; the fine-tuning recovery lines
    stay out of the grader's training too."""
    test = [r for r in ROWS if r.split == "test"]
    dev = [r for r in ROWS if r.split == "dev"]
    kinds = ("restart_phrases", "dangling_restarts", "trap_phrases", "degenerate_phrases")
    held_out = _phrases(test, *kinds)
    training = _phrases(dev, *kinds) | {normalise(t) for t, _ in read_training_sentences()}
    training |= {normalise(u.text) for u in training_units(dev)}
    assert len(held_out) >= 60
    for phrase in held_out:
        for seen in training:
            assert phrase not in seen and (len(seen.split()) < 3 or seen not in phrase), (phrase, seen)


def test_no_grader_training_unit_shares_a_fine_tuning_recovery_sentence() -> None:
    """The positive-control model learns these lines and is graded by the offline grader: the
    grader is built on none of them (neither the sentence file nor the dev units it trains on)."""
    from esr_eval.training.finetune.steered import RecoveryGrammar

    grammar = RecoveryGrammar.load()
    recovery = [*OffTopicBank.load().recovery_lines, *grammar.noticing, *grammar.returning]
    sentences = {normalise(u.text) for line in recovery for u in split_units(line)}
    sentences = {s for s in sentences if len(s.split()) >= 3}
    assert len(sentences) >= 60
    dev = [r for r in ROWS if r.split == "dev"]
    trained = {normalise(u.text) for u in training_units(dev)}
    for text in trained:
        assert not any(s in text or (len(text.split()) >= 3 and text in s) for s in sentences), text
    assert not any(shares_recovery_sentence(t) for t, _ in read_training_sentences())  # nothing left to drop


def test_restart_classifier_was_trained_on_this_dev_half() -> None:
    """Retrain (`esr-eval train-grader`) and bump GRADER_VERSION when the dev half changes."""
    import hashlib

    record = json.loads(WEIGHTS_PATH.read_text())["record"]
    dev = [r for r in ROWS if r.split == "dev"]
    digest = hashlib.sha256(json.dumps([r.to_dict() for r in dev], sort_keys=True).encode()).hexdigest()
    assert record["dev_rows"] == {"n": len(dev), "sha256": digest}


def test_eval_yaml_counts_the_default_half() -> None:
    import yaml

    from esr_eval.tasks.task_setup import EVAL_YAML

    listing = {t["name"]: t for t in yaml.safe_load(EVAL_YAML.read_text())["tasks"]}
    assert listing["judge_validation"]["dataset_samples"] == sum(r.split == "test" for r in ROWS)
