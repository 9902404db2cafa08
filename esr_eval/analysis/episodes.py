"""`esr-eval episodes LOG --detectors FILE`: off-topic-detector activity along multi-attempt answers.

For each multi-attempt episode the conversation is rebuilt (the messages sent, then the answer),
the detectors' activations are read per answer token with the same steering as generated (from
the logged request, else the sample metadata; none with --unsteered), summed over detectors, and
aligned at the token where the second attempt starts. Regions: off-topic (attempt 1, up to the
correction window), correction (a few tokens either side of the boundary), on-topic (the last
attempt after the window). Writes episodes.json (curve, per-region statistics, per-episode rows)
and episodes.png (mean and SEM over episodes).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from inspect_ai.log import EvalLog, EvalSample

from esr_eval.analysis.boundaries import boundary_tokens
from esr_eval.analysis.logs import is_esr_value, primary_scorer, read_logs, short_model
from esr_eval.analysis.regions import Episode, plot, statistics
from esr_eval.io import atomic_write_text
from esr_eval.steering.intervention import Intervention, steering_from_extra_body


def read_detectors(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no detectors file at {path}: write one with `esr-eval find-detectors`")
    data = json.loads(path.read_text())
    latents = data.get("latents") if isinstance(data, dict) else None
    if not latents or not all(isinstance(k, int) and k >= 0 for k in latents):
        raise ValueError(f'{path} lists no detector latents: expected JSON with "latents": [int, ...]')
    return data


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
    """The steering of the last logged model request, else the sample's latent/boost/ablated."""
    for event in reversed(sample.events or []):
        if getattr(event, "event", None) == "model" and event.config and event.config.extra_body:
            steering, _ = steering_from_extra_body(event.config.extra_body)
            if steering:
                return steering
    meta = sample.metadata or {}
    out = []
    if meta.get("latent") is not None and meta.get("boost") is not None:
        out.append(Intervention(int(meta["latent"]), float(meta["boost"]), meta.get("mode", "add")))
    out += [Intervention(int(k), 0.0, "clamp") for k in meta.get("ablated") or []]
    return out


def find_episodes(log: EvalLog, scorer: str | None = None, unsteered: bool = False) -> list[Episode]:
    name = primary_scorer(log, scorer)
    if name is None:
        raise ValueError(f"{log.location} has no attempts-judge scores: score it with the esr_eval judge first")
    episodes = []
    for s in log.samples or []:
        score = (s.scores or {}).get(name)
        if score is None or not is_esr_value(score.value):
            continue
        attempts = (score.metadata or {}).get("attempts") or []
        if score.value.get("multi_attempt", 0) < 0.5 or score.value.get("judge_error", 0) >= 0.5 or len(attempts) < 2:
            continue
        answer = s.output.completion if s.output else ""
        episodes.append(
            Episode(s.id, s.epoch, conversation(s), answer, attempts, [] if unsteered else generated_steering(s))
        )
    return episodes


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
) -> dict[str, Any]:
    from rich.progress import track

    from esr_eval.provider import load_engine

    detectors = read_detectors(detectors_path)
    logs = read_logs([log_path])
    if len(logs) != 1:
        raise ValueError(f"{log_path} holds {len(logs)} logs: pass one log file")
    log = logs[0]
    if not log.eval.model.startswith("steered/"):
        raise ValueError(
            f"{log_path} was generated by {log.eval.model}: episodes reads a steered/... model's activations"
        )
    episodes = find_episodes(log, scorer, unsteered)
    if not episodes:
        raise ValueError(f"{log_path} has no multi-attempt episode with judged attempts: nothing to align")
    margs = log.eval.model_args or {}
    engine = load_engine(
        log.eval.model.split("/", 1)[1],
        margs.get("dictionary"),
        margs.get("layer"),
        margs.get("labels"),
        dtype or margs.get("dtype", "float32"),
        device or margs.get("device", "cpu"),
    )
    if engine.dictionary is None:
        raise ValueError("the log's model has no dictionary: pass a log run with -M dictionary=...")
    if detectors.get("layer") is not None and int(detectors["layer"]) != engine.layer:
        raise ValueError(
            f"detectors were found at layer {detectors['layer']} but the model reads layer {engine.layer}: "
            "use detectors found with the same model and dictionary"
        )
    for k in detectors["latents"]:
        engine.dictionary.check_latent(k)
    locate_boundaries(episodes, engine.tokenizer)
    located = [ep for ep in episodes if ep.boundary is not None]
    for start in track(range(0, len(located), batch_size), description="reading detector activations"):
        chunk = located[start : start + batch_size]
        acts = engine.read_latents(
            [(ep.messages, ep.answer) for ep in chunk],
            detectors["latents"],
            [ep.steering for ep in chunk],
            batch_size=batch_size,
        )
        for ep, a in zip(chunk, acts):
            ep.activity = a.sum(-1).tolist()
    stats = statistics(located, window, half_width)
    result = {
        "log": str(log_path),
        "model": log.eval.model,
        "detectors": str(detectors_path),
        "n_detectors": len(detectors["latents"]),
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


def _episodes(args: argparse.Namespace) -> int:
    out = args.out or Path(args.log).with_suffix("").as_posix() + "-episodes"
    r = run_episodes(
        args.log,
        args.detectors,
        out,
        args.unsteered,
        args.window,
        args.correction_tokens,
        args.scorer,
        args.batch_size,
        args.device,
        args.dtype,
    )
    reg, tests = r["regions"], r["tests"]["off_topic_vs_on_topic"]
    print(
        f"{r['n_episodes']} episodes ({r['n_unlocated']} without a located boundary); mean summed activation: "
        + ", ".join(f"{k} {v['mean']:.3g}" for k, v in reg.items())
        + f"; off-topic > on-topic: Wilcoxon p={tests['p_value']:.3g}, Cohen's d={tests['cohens_d']:.2f}"
    )
    print(f"wrote {out}/episodes.json and episodes.png")
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "episodes",
        help="detector activations along multi-attempt answers, aligned at the correction",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("log", help="one Inspect log file of a steered/... model")
    p.add_argument("--detectors", required=True, help="detectors JSON from `esr-eval find-detectors`")
    p.add_argument("--unsteered", action="store_true", help="read activations without the generation's steering")
    p.add_argument("--out", help="output folder (default: next to the log, LOG-episodes)")
    p.add_argument("--window", type=int, default=40, help="tokens either side of the boundary in the curve")
    p.add_argument("--correction-tokens", type=int, default=3, help="half-width of the correction region")
    p.add_argument("--scorer", help="attempts-judge scorer (default: the first in the log)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="override the log's -M device")
    p.add_argument("--dtype", help="override the log's -M dtype")
    p.set_defaults(func=_episodes)
