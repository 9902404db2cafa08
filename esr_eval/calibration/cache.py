"""The threshold cache: jsonl rows {key fields..., threshold, trials, score, history}.

The key holds everything that changes a threshold: the model's weights, the dictionary, the
latent, the grader and its version, the target, the prompt set, the generation settings, the
calibration budget and method, and the dtype and engine that generate. A row written before a key field existed never matches. Writes rewrite the
file atomically under an inter-process lock, so two processes sharing one cache keep both rows;
a line that does not parse is reported and kept. Thresholds committed with the package
(`assets/*/thresholds.jsonl`, e.g. the positive control's evidence runs) are read, never written,
after the user's cache: a run whose key matches reuses them instead of recalibrating.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from esr_eval.calibration.bisection import CalibrationResult
from esr_eval.config import asset_path
from esr_eval.files import check_writable, read_jsonl_cache, update_jsonl_cache
from esr_eval.steering.models import cache_dir

KEY_FIELDS = (
    "model",
    "dictionary",
    "latent",
    "grader",
    "target",
    "prompts",
    "max_tokens",
    "temperature",
    "top_p",
    "repetition_penalty",
    "calibration_trials",
    "calibration",  # the search method and its rounds
    "dtype",
    "engine",
)


def prompt_set_hash(prompts: list[str]) -> str:
    return hashlib.sha1("\n".join(prompts).encode()).hexdigest()[:12]


ASSETS = asset_path()


def shipped_threshold_files() -> list[Path]:
    """Threshold rows committed with the package (one file per asset folder that has one)."""
    return sorted(ASSETS.glob("*/thresholds.jsonl"))


class ThresholdCache:
    def __init__(self, path: str | Path | None = None, shipped: list[Path] | None = None) -> None:
        self.path = Path(path) if path else cache_dir() / "thresholds.jsonl"
        self.shipped = shipped_threshold_files() if shipped is None else shipped

    def check_writable(self) -> None:
        """Refuse an unwritable cache before calibration (whose thresholds it would lose)."""
        check_writable(self.path, "threshold cache", "pass -T threshold_cache=FILE in a writable folder, or set ESR_EVAL_CACHE to one")

    @staticmethod
    def key(row: dict[str, Any]) -> str | None:
        """The row's key, or None when it lacks a key field (an older format: never reused)."""
        if any(k not in row for k in KEY_FIELDS):
            return None
        return json.dumps({k: row[k] for k in KEY_FIELDS}, sort_keys=True)

    def rows(self) -> list[dict[str, Any]]:
        """Shipped rows first, then the user's cache (later rows win)."""
        return [row for path in [*self.shipped, self.path] for row in read_jsonl_cache(path).rows]

    def get(self, **fields: Any) -> CalibrationResult | None:
        wanted = self.key(fields)
        for row in reversed(self.rows()):
            if self.key(row) == wanted:
                history = [(float(b), float(s)) for b, s in row.get("history", [])]
                return CalibrationResult(float(row["threshold"]), int(row["trials"]), float(row["score"]), history,
                                         cached=True, judge_errors=int(row.get("judge_errors", 0)))
        return None

    def put(self, result: CalibrationResult, **fields: Any) -> None:
        key = self.key(fields)
        if key is None:
            raise ValueError(f"a threshold cache row needs every key field: {KEY_FIELDS}")
        row = {**{k: fields[k] for k in KEY_FIELDS}, **asdict(result)}
        row.pop("cached")
        update_jsonl_cache(self.path, lambda rows: [r for r in rows if self.key(r) != key] + [row])

    def thresholds(self, **fields: Any) -> dict[int, float]:
        """Cached thresholds of every latent that matches the other key fields."""
        match = {k: v for k, v in fields.items() if k in KEY_FIELDS and k != "latent"}
        return {
            int(r["latent"]): float(r["threshold"])
            for r in self.rows()
            if self.key(r) is not None and all(r.get(k) == v for k, v in match.items())
        }
