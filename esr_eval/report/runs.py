"""Runs: one log each (a model on a task with its parameters), with its trials summarised."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import cached_property

from inspect_ai.log import EvalLog

from esr_eval.report.paper import PRESET_PARAMS
from esr_eval.results.logs import (
    finetune_info,
    log_trials,
    newest_per_run,
    read_logs,
    short_model,
    short_task,
    task_params,
)
from esr_eval.results.stats import Summary


def model_params(log: EvalLog) -> float | None:
    """Parameter count: model args or eval metadata key `n_params`, then presets (a tuned model's
    base), then a size in the name."""
    for source in (log.eval.model_args or {}, log.eval.metadata or {}):
        if source.get("n_params") is not None:
            return float(source["n_params"])
    tuned = finetune_info(log)
    base = tuned.base_model if tuned and tuned.base_model else short_model(log.eval.model)
    name = str(base).split("/")[-1].lower()  # LoRA merges add no parameters
    if name in PRESET_PARAMS:
        return PRESET_PARAMS[name]
    found = re.search(r"(\d+(?:\.\d+)?)([mb])(?![a-z])", name)
    return float(found.group(1)) * (1e6 if found.group(2) == "m" else 1e9) if found else None


@dataclass
class Run:
    log: EvalLog
    scorer: str | None = None

    @cached_property
    def summary(self) -> Summary:
        return Summary(log_trials(self.log, self.scorer))

    @property
    def task(self) -> str:
        return short_task(self.log.eval.task)

    @property
    def model(self) -> str:
        return short_model(self.log.eval.model)

    @property
    def model_cell(self) -> str:
        tuned = finetune_info(self.log)
        if not tuned or tuned.mixing_ratio is None:
            return self.model
        what = tuned.recipe or "self-correction"
        return f"{self.model} ({tuned.base_model} + {100 * float(tuned.mixing_ratio):.0f}% {what})"


def load_runs(paths: list[str], scorer: str | None = None) -> list[Run]:
    """The newest log of every run under `paths`, sorted by task, size, model and parameters."""
    runs = [Run(log, scorer) for log in newest_per_run(read_logs(paths))]
    return sorted(runs, key=lambda r: (r.task, model_params(r.log) or math.inf, r.model, task_params(r.log)))
