"""Self-correction fine-tuning: data synthesis (`data`) and LoRA training with a merge (`train`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METRICS_FILE = "finetune_metrics.json"
SUMMARY_KEYS = ("base_model", "mixing_ratio", "rows", "correction_rows", "optimizer_steps")


def finetune_summary(model_source: str) -> dict[str, Any] | None:
    """What `esr-eval finetune` recorded in a merged model folder (mixing ratio, rows, steps, final
    losses), for the eval log; None when `model_source` is not such a folder."""
    path = Path(model_source).expanduser() / METRICS_FILE
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    summary = {k: metrics.get(k) for k in SUMMARY_KEYS}
    last = (metrics.get("epochs") or [{}])[-1]
    summary["train_loss"], summary["val_loss"] = last.get("train_loss"), last.get("val_loss")
    return summary
