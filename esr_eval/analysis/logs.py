"""Read Inspect logs and recompute the ESR figures from per-sample `Score.value` dicts.

Working from the samples (not from `log.results`) keeps every tool independent of how the
scorer names its metrics. A score counts as an attempts-judge score when its value is a dict
with `multi_attempt` and `first_score`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inspect_ai.log import EvalLog, EvalSample, list_eval_logs, read_eval_log

ESR_KEYS = ("multi_attempt", "first_score")


def console():
    """A rich console; when the output is not a terminal (CI logs, files) it is 140 columns wide
    instead of rich's default 80, so tables are not cut."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=140)


def log_paths(paths: Iterable[str | Path]) -> list[str]:
    """Log files named directly, plus every log inside named folders (newest first)."""
    found: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found += [info.name for info in list_eval_logs(str(p))]
        elif p.exists():
            found.append(str(p))
        else:
            raise FileNotFoundError(f"no log at {p}: pass an Inspect log file (.eval/.json) or a log folder")
    return found


def read_logs(paths: Iterable[str | Path], header_only: bool = False) -> list[EvalLog]:
    files = log_paths(paths)
    if not files:
        raise FileNotFoundError(
            f"no Inspect logs in {', '.join(map(str, paths))}: run `inspect eval ... --log-dir DIR` first"
        )
    return [read_eval_log(f, header_only=header_only) for f in files]


def short_task(task: str) -> str:
    """`esr_eval/steering_resistance` -> `steering_resistance`."""
    return task.rsplit("/", 1)[-1]


def short_model(model: str) -> str:
    """`steered/smollm2-135m` -> `smollm2-135m`, `steered//data/my-model` -> `my-model`; other
    providers keep their prefix."""
    if not model.startswith("steered/"):
        return model
    source = model.split("/", 1)[1]
    return Path(source).name if source.startswith(("/", ".", "~")) else source


def finetune_info(log: EvalLog) -> dict[str, Any] | None:
    """What `esr-eval finetune` recorded for the log's model (task metadata `finetune`)."""
    return (log.eval.metadata or {}).get("finetune")


def is_esr_value(value: Any) -> bool:
    return isinstance(value, dict) and all(k in value for k in ESR_KEYS)


def esr_scorer_names(samples: Iterable[EvalSample]) -> list[str]:
    """Names of the attempts-judge scorers present in any sample, in first-seen order."""
    names: list[str] = []
    for s in samples:
        for name, score in (s.scores or {}).items():
            if name not in names and is_esr_value(score.value):
                names.append(name)
    return names


def primary_scorer(log: EvalLog, requested: str | None = None) -> str | None:
    names = esr_scorer_names(log.samples or [])
    if requested is not None:
        if requested not in names:
            raise ValueError(f"scorer {requested!r} is not in {log.location}: choose one of {names or 'none'}")
        return requested
    return names[0] if names else None


def numeric(value: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in value.items() if isinstance(v, (int, float, bool))}


def sample_values(log: EvalLog, scorer: str | None = None) -> list[dict[str, float]]:
    """The attempts-judge value dict of every scored sample (all epochs)."""
    name = primary_scorer(log, scorer)
    if name is None:
        return []
    return [
        numeric(s.scores[name].value)
        for s in log.samples or []
        if s.scores and name in s.scores and is_esr_value(s.scores[name].value)
    ]


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for k successes in n trials (NaN when n is 0)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(xs: list[float]) -> tuple[float, float, float]:
    """Mean with a t 95% interval."""
    from scipy import stats

    if not xs:
        return (math.nan, math.nan, math.nan)
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return (m, math.nan, math.nan)
    sem = stats.sem(xs)
    half = float(stats.t.ppf(0.975, len(xs) - 1) * sem) if sem > 0 else 0.0
    return (m, m - half, m + half)


@dataclass
class Summary:
    """ESR figures over a set of trials, as the scorer's metrics define them: rates over trials
    without a judge error (`n`), first scores over trials with an attempt, `*_clean` without
    degraded trials."""

    n: int = 0
    judge_errors: int = 0
    multi_attempt: int = 0
    esr: int = 0
    improved: int = 0
    degraded: int = 0
    n_clean: int = 0
    multi_attempt_clean: int = 0
    esr_clean: int = 0
    first_scores: list[float] = field(default_factory=list)
    improvements: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, values: Iterable[dict[str, float]]) -> Summary:
        s = cls()
        for v in values:
            if v.get("judge_error", 0) >= 0.5:
                s.judge_errors += 1
                continue
            s.n += 1
            multi = v.get("multi_attempt", 0) >= 0.5
            esr = v.get("esr", 0) >= 0.5
            degraded = v.get("degraded", 0) >= 0.5
            s.multi_attempt += multi
            s.esr += esr
            s.degraded += degraded
            if not degraded:
                s.n_clean += 1
                s.multi_attempt_clean += multi
                s.esr_clean += esr
            if v.get("n_attempts", 1) >= 1:
                s.first_scores.append(v["first_score"])
            if multi:
                s.improvements.append(v.get("improvement", v.get("last_score", v["first_score"]) - v["first_score"]))
                s.improved += esr
        return s

    def rate(self, k: int, n: int | None = None) -> float:
        n = self.n if n is None else n
        return k / n if n else math.nan

    def metrics(self) -> dict[str, float]:
        """The named figures (the scorer's metric names) the gate and report use."""
        return {
            "n": float(self.n + self.judge_errors),
            "n_judged": float(self.n),
            "judge_errors": float(self.judge_errors),
            "n_multi_attempt": float(self.multi_attempt),
            "n_esr": float(self.esr),
            "n_clean": float(self.n_clean),
            "multi_attempt_rate": self.rate(self.multi_attempt),
            "esr_rate": self.rate(self.esr),
            "improvement_rate": self.rate(self.improved, self.multi_attempt),
            "degraded_rate": self.rate(self.degraded),
            "multi_attempt_rate_clean": self.rate(self.multi_attempt_clean, self.n_clean),
            "esr_rate_clean": self.rate(self.esr_clean, self.n_clean),
            "mean_first_score": mean_interval(self.first_scores)[0],
            "mean_improvement": mean_interval(self.improvements)[0],
        }

    def intervals(self) -> dict[str, tuple[float, float]]:
        return {
            "multi_attempt_rate": wilson(self.multi_attempt, self.n),
            "esr_rate": wilson(self.esr, self.n),
            "improvement_rate": wilson(self.improved, self.multi_attempt),
            "esr_rate_clean": wilson(self.esr_clean, self.n_clean),
            "mean_first_score": mean_interval(self.first_scores)[1:],
        }


def group_samples(log: EvalLog, key: str, scorer: str | None = None) -> dict[Any, Summary]:
    """Summaries per value of a sample metadata key (e.g. `level`, `variant`)."""
    name = primary_scorer(log, scorer)
    groups: dict[Any, list[dict[str, float]]] = {}
    for s in log.samples or []:
        if name is None or not s.scores or name not in s.scores:
            continue
        meta = s.metadata or {}
        if key not in meta:
            continue
        value = s.scores[name].value
        if is_esr_value(value):
            groups.setdefault(meta[key], []).append(numeric(value))
    return {k: Summary.of(v) for k, v in groups.items()}


def task_params(log: EvalLog) -> str:
    """The task arguments the run was given (not the defaults) as `k=v` pairs; paths show their
    file name, long values are shortened."""
    passed = log.eval.task_args_passed if log.eval.task_args_passed is not None else log.eval.task_args
    parts = []
    for k, v in sorted((passed or {}).items()):
        if v is None:
            continue
        text = str(v).replace(", ", ",")
        if isinstance(v, str) and "/" in v:
            text = Path(v).name
        parts.append(f"{k}={text if len(text) <= 24 else text[:21] + '...'}")
    return " ".join(parts)


def latest_per_run(logs: list[EvalLog], prefer_success: bool = True) -> list[EvalLog]:
    """One log per (task, model, task args): an eval-set's retries leave older attempts beside
    the newest. Keeps the newest, or (prefer_success) the newest successful one where there is one."""
    best: dict[tuple, EvalLog] = {}

    def rank(log: EvalLog) -> tuple:
        try:  # `created` has whole seconds; the file time breaks ties
            mtime = os.path.getmtime(str(log.location).removeprefix("file://"))
        except OSError:
            mtime = 0.0
        return (prefer_success and log.status == "success", log.eval.created, mtime)

    for log in logs:
        key = (log.eval.task, log.eval.model, repr(sorted((log.eval.task_args or {}).items())))
        if key not in best or rank(log) > rank(best[key]):
            best[key] = log
    return list(best.values())
