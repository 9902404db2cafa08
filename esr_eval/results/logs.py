"""Reading Inspect logs into trial records (`schema.Trial`), for the report, the gate, the plots
and judge agreement.

Working from the samples (not from `log.results`) keeps the tools independent of how a scorer
names its metrics, and gives every epoch its own trial. A score is an attempts-judge score when
its value is a `TrialValue` dict.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from inspect_ai.log import EvalLog, EvalSample, list_eval_logs, read_eval_log

from esr_eval.errors import DataFileError, MissingFileError, UsageError
from esr_eval.results.stats import PairedTrial, Summary
from esr_eval.schema import FinetuneInfo, SampleMetadata, Trial, TrialValue


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
            raise MissingFileError(f"no log at {p}: pass an Inspect log file (.eval/.json) or a log folder")
    return found


def read_log(path: str | Path, header_only: bool = False) -> EvalLog:
    """One Inspect log; a file that is not one is an error naming it (not a zip or JSON traceback)."""
    try:
        return read_eval_log(str(path), header_only=header_only)
    except FileNotFoundError:
        raise MissingFileError(f"no log at {path}: pass an Inspect log file (.eval/.json) or a log folder") from None
    except Exception as err:
        reason = " ".join(str(err).split())[:100] or type(err).__name__
        raise DataFileError(path, None, f"is not a readable Inspect log ({reason})", "pass a log written by `inspect eval`") from None


def read_logs(paths: Iterable[str | Path], header_only: bool = False) -> list[EvalLog]:
    paths = list(paths)
    files = log_paths(paths)
    if not files:
        raise MissingFileError(
            f"no Inspect logs in {', '.join(map(str, paths))}: run `inspect eval ... --log-dir DIR` first"
        )
    return [read_log(f, header_only=header_only) for f in files]


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


def finetune_info(log: EvalLog) -> FinetuneInfo | None:
    """What `esr-eval finetune` recorded for the log's model (task metadata `finetune`)."""
    return FinetuneInfo.of_metadata(log.eval.metadata)


def esr_scorer_names(samples: Iterable[EvalSample]) -> list[str]:
    """Names of the attempts-judge scorers present in any sample, in first-seen order."""
    names: list[str] = []
    for s in samples:
        for name, score in (s.scores or {}).items():
            if name not in names and TrialValue.is_value(score.value):
                names.append(name)
    return names


def primary_scorer(log: EvalLog, requested: str | None = None) -> str | None:
    names = esr_scorer_names(log.samples or [])
    if requested is not None:
        if requested not in names:
            raise UsageError(f"scorer {requested!r} is not in {log.location}: choose one of {names or 'none'}")
        return requested
    return names[0] if names else None


def sample_latent(sample: EvalSample) -> int | None:
    latent = SampleMetadata.from_metadata(sample.metadata).latent
    return None if latent is None else int(latent)


def sample_trial(sample: EvalSample, scorer: str) -> Trial | None:
    score = (sample.scores or {}).get(scorer)
    if score is None or not TrialValue.is_value(score.value):
        return None
    return Trial(TrialValue.from_value(score.value), sample_latent(sample), sample.id, sample.epoch)


def log_trials(log: EvalLog, scorer: str | None = None) -> list[Trial]:
    """The trial of every scored sample and epoch, by the first (or the named) attempts judge."""
    name = primary_scorer(log, scorer)
    if name is None:
        return []
    return [t for s in log.samples or [] if (t := sample_trial(s, name)) is not None]


def group_trials(log: EvalLog, key: str, scorer: str | None = None) -> dict[Any, Summary]:
    """Summaries per value of a sample metadata key (e.g. `level`, `variant`)."""
    name = primary_scorer(log, scorer)
    groups: dict[Any, list[Trial]] = {}
    for s in log.samples or []:
        meta = s.metadata or {}
        if name is None or key not in meta:
            continue
        trial = sample_trial(s, name)
        if trial is not None:
            groups.setdefault(meta[key], []).append(trial)
    return {k: Summary(v) for k, v in groups.items()}


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


def run_key(log: EvalLog) -> tuple:
    """What makes two logs the same run: task, model, model args, task args and the grader."""
    roles = {k: getattr(v, "model", str(v)) for k, v in (log.eval.model_roles or {}).items()}
    return (
        log.eval.task,
        log.eval.model,
        repr(sorted((log.eval.model_args or {}).items())),
        repr(sorted((log.eval.task_args or {}).items())),
        repr(sorted(roles.items())),
    )


def newest_per_run(logs: list[EvalLog]) -> list[EvalLog]:
    """One log per run (`run_key`): an eval-set's retries leave older attempts beside the newest,
    and the newest is what counts, failed or not (a newer failure is never hidden)."""

    def rank(log: EvalLog) -> tuple:
        try:  # `created` has whole seconds; the file time breaks ties
            mtime = os.path.getmtime(str(log.location).removeprefix("file://"))
        except OSError:
            mtime = 0.0
        return (log.eval.created, mtime)

    best: dict[tuple, EvalLog] = {}
    for log in logs:
        key = run_key(log)
        if key not in best or rank(log) > rank(best[key]):
            best[key] = log
    return list(best.values())


def newest_log_files(paths: Iterable[str | Path]) -> list[str]:
    """Files named directly, and from each folder the newest log of every run."""
    files: list[str] = []
    for p in paths:
        found = log_paths([p])
        if Path(p).is_dir():
            headers = [read_log(f, header_only=True) for f in found]
            found = [str(log.location) for log in newest_per_run(headers)]
        files += found
    return files


def paired_trials(log: EvalLog, scorer: str | None = None) -> list[PairedTrial]:
    """The continuation controls' trials with their condition and pair (sample metadata)."""
    name = primary_scorer(log, scorer)
    if name is None:
        return []
    return [
        t
        for s in log.samples or []
        if (score := (s.scores or {}).get(name)) is not None
        and (t := PairedTrial.of(score.value, SampleMetadata.from_metadata(s.metadata), s.id)) is not None
    ]
