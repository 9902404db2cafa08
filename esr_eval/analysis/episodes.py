"""Off-topic-detector activity along multi-attempt answers, aligned at the correction, beside
steered answers that went off topic and never restarted (the method: `esr_eval.cli.episodes`)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from inspect_ai.event import ModelEvent
from inspect_ai.log import EvalLog, EvalSample

from esr_eval.analysis.boundaries import boundary_tokens
from esr_eval.analysis.regions import Episode, no_restart_baseline, plot, statistics
from esr_eval.config import OFF_TOPIC_MAX_SCORE
from esr_eval.errors import UsageError
from esr_eval.files import atomic_write_text
from esr_eval.results.logs import primary_scorer, read_logs, short_model
from esr_eval.schema import DetectorsFile, SampleMetadata, TrialValue
from esr_eval.steering.intervention import Intervention, steering_from_extra_body


def conversation(sample: EvalSample) -> list[dict[str, str]]:
    """The messages the model answered: those before the last assistant turn (else the input)."""
    messages = list(sample.messages or [])
    last = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=None)
    if last is not None:
        return [{"role": m.role if m.role != "tool" else "user", "content": m.text} for m in messages[:last]]
    if isinstance(sample.input, str):
        return [{"role": "user", "content": sample.input}]
    return [{"role": m.role, "content": m.text} for m in sample.input]


def generated_steering(sample: EvalSample) -> list[Intervention]:
    """The steering of the last logged model request, else the one its metadata gives the solver."""
    for event in reversed(sample.events or []):
        if isinstance(event, ModelEvent) and event.config and event.config.extra_body:
            steering, _ = steering_from_extra_body(event.config.extra_body)
            if steering:
                return steering
    return SampleMetadata.from_metadata(sample.metadata).interventions()


def _judged_samples(log: EvalLog, scorer: str | None):
    """(sample, trial value, attempts) of every judged sample of the log's attempts-judge scorer."""
    name = primary_scorer(log, scorer)
    if name is None:
        raise UsageError(f"{log.location} has no attempts-judge scores: score it with the esr_eval judge first")
    for s in log.samples or []:
        score = (s.scores or {}).get(name)
        if score is None or not TrialValue.is_value(score.value):
            continue
        value = TrialValue.from_value(score.value)
        if value.judged:
            yield s, value, (score.metadata or {}).get("attempts") or []


def _episode(s: EvalSample, attempts: list, unsteered: bool) -> Episode:
    answer = s.output.completion if s.output else ""
    return Episode(s.id, s.epoch, conversation(s), answer, attempts, [] if unsteered else generated_steering(s))


def find_episodes(log: EvalLog, scorer: str | None = None, unsteered: bool = False) -> list[Episode]:
    """Multi-attempt answers with the judge's attempts."""
    return [
        _episode(s, attempts, unsteered)
        for s, value, attempts in _judged_samples(log, scorer)
        if value.multi_attempt >= 0.5 and len(attempts) >= 2
    ]


def find_no_restart(log: EvalLog, scorer: str | None = None, unsteered: bool = False, off_topic_max: float = OFF_TOPIC_MAX_SCORE) -> list[Episode]:
    """Steered answers of one attempt that scored at most `off_topic_max`: off topic, never restarted."""
    return [
        _episode(s, attempts, unsteered)
        for s, value, attempts in _judged_samples(log, scorer)
        if value.n_attempts == 1 and value.first_score <= off_topic_max and generated_steering(s)
    ]


def locate_boundaries(episodes: list[Episode], tokenizer) -> None:
    for ep in episodes:
        starts = boundary_tokens(tokenizer, ep.answer, ep.attempts)
        ep.first_start = starts[0] or 0
        ep.boundary = starts[1]
        found = [t for t in starts[1:] if t is not None]
        ep.last_start = found[-1] if found else None


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def run_episodes(
    log_path: str,
    detectors_path: str,
    out: str | Path,
    unsteered: bool = False,
    window: int = 40,
    half_width: int = 3,
    scorer: str | None = None,
    batch_size: int = 8,
    device: str | None = None,
    dtype: str | None = None,
    off_topic_max: float = OFF_TOPIC_MAX_SCORE,
) -> dict[str, Any]:
    from rich.progress import track

    from esr_eval.steering.load import load_engine

    detectors = DetectorsFile.read(detectors_path)
    logs = read_logs([log_path])
    if len(logs) != 1:
        raise UsageError(f"{log_path} holds {len(logs)} logs: pass one log file")
    log = logs[0]
    if not log.eval.model.startswith("steered/"):
        raise UsageError(
            f"{log_path} was generated by {log.eval.model}: episodes reads a steered/... model's activations"
        )
    episodes = find_episodes(log, scorer, unsteered)
    if not episodes:
        raise UsageError(f"{log_path} has no multi-attempt episode with judged attempts: nothing to align")
    margs = log.eval.model_args or {}
    engine = load_engine(
        log.eval.model.split("/", 1)[1],
        margs.get("dictionary"),
        margs.get("layer"),
        margs.get("labels"),
        dtype or margs.get("dtype"),
        device or margs.get("device", "cpu"),
    )
    if engine.dictionary is None:
        raise UsageError("the log's model has no dictionary: pass a log run with -M dictionary=...")
    if detectors.layer is not None and detectors.layer != engine.layer:
        raise UsageError(
            f"detectors were found at layer {detectors.layer} but the model reads layer {engine.layer}: "
            "use detectors found with the same model and dictionary"
        )
    for k in detectors.latents:
        engine.dictionary.check_latent(k)
    locate_boundaries(episodes, engine.tokenizer)
    located = [ep for ep in episodes if ep.boundary is not None]
    no_restart = find_no_restart(log, scorer, unsteered, off_topic_max)
    both = located + no_restart
    for start in track(range(0, len(both), batch_size), description="reading detector activations"):
        chunk = both[start : start + batch_size]
        acts = engine.read_latents(
            [(ep.messages, ep.answer) for ep in chunk],
            detectors.latents,
            [ep.steering for ep in chunk],
            batch_size=batch_size,
        )
        for ep, a in zip(chunk, acts):
            ep.activity = a.sum(-1).tolist()
    stats = statistics(located, window, half_width)
    stats["no_restart"] = {"off_topic_max_score": off_topic_max, **no_restart_baseline(stats, no_restart)}
    result = {
        "log": str(log_path),
        "model": log.eval.model,
        "detectors": str(detectors_path),
        "n_detectors": len(detectors.latents),
        "steering": "none" if unsteered else "as generated",
        "n_episodes": len(located),
        "n_unlocated": len(episodes) - len(located),
        **stats,
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "episodes.json", json.dumps(_json_safe(result), indent=2))
    plot(stats, f"{short_model(log.eval.model)}: detector activity ({len(located)} episodes)", out / "episodes.png")
    return result
