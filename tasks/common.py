"""What every ESR task shares: the steered model, prompts, latents, calibration, dataset, solver."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inspect_ai.dataset import MemoryDataset, Sample
from inspect_ai.model import Model, get_model
from inspect_ai.solver import Generate, Solver, TaskState, solver

from esr_eval.calibration import Calibrator, sample_seed
from esr_eval.latents import load_prompts, rate_concreteness, sample_latents
from esr_eval.provider import DEFAULT_MODEL, SteeredModelAPI, steered_api
from esr_eval.steering.dictionary import FeatureDictionary
from esr_eval.steering.engine import SteeredLM
from esr_eval.steering.intervention import Intervention, steering_to_extra_body

PROMPTS_FILE = Path(__file__).parent / "data" / "prompts.jsonl"


def as_list(value: Any, cast=int) -> list | None:
    """-T values arrive through YAML: `[1,2]`, `1,2`, `"1"` or `1`."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = [v for v in value.strip("[]").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [cast(v.strip() if isinstance(v, str) else v) for v in value]


def steered_model() -> tuple[Model | None, SteeredModelAPI]:
    """The evaluated model, or the embedded default when the user named none (then the Model
    is returned so the task can pin it; a user's --model is never overridden)."""
    active = get_model()
    if str(active) == "none/none":
        default = get_model(DEFAULT_MODEL)
        return default, steered_api(default)  # type: ignore[return-value]
    api = steered_api(active)
    if api is None:
        raise ValueError(
            f"esr_eval tasks steer a local model, but {active} is not one: "
            "use --model steered/<preset | hub id | path> (e.g. steered/smollm2-135m)"
        )
    return None, api


@dataclass
class Setup:
    """What the task function resolves before the eval starts."""

    default_model: Model | None
    api: SteeredModelAPI
    prompts: list[dict[str, str]]
    latents: list[int]
    labels: dict[int, str]
    calibrator: Calibrator
    generation: dict[str, Any]
    prompts_per_latent: int
    seed: int
    notes: list[str] = field(default_factory=list)


COMMON_DEFAULTS: dict[str, Any] = dict(
    prompts=None,  # txt / jsonl / csv file; default: the packaged "explain how" set
    n_latents=8,
    prompts_per_latent=5,
    latents=None,  # pin latents instead of sampling
    seed=0,
    relevance="topk",  # or "strict"
    concreteness=None,  # a model that rates label concreteness (filter >= 65)
    target=0.3,  # first-attempt score (0-1) the calibration aims at
    calibration_trials=10,
    threshold_cache=None,  # default: <cache dir>/thresholds.jsonl
    max_tokens=384,
    temperature=0.6,
)


def prepare(steer_dictionary: Callable[[SteeredLM], FeatureDictionary] | None = None, **args: Any) -> Setup:
    """Resolve the model, prompts and latents from the task args every ESR task shares; raise
    one-line errors before any generation. `steer_dictionary` builds a second dictionary (e.g. a
    direction set) whose latents are steered instead of sampled SAE latents."""
    unknown = sorted(set(args) - set(COMMON_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown task args {unknown}: the shared ones are {sorted(COMMON_DEFAULTS)}")
    a = {**COMMON_DEFAULTS, **{k: v for k, v in args.items() if v is not None}}
    if not 0.0 < float(a["target"]) < 1.0:
        raise ValueError(f"target {a['target']} must lie in (0, 1): it is the first-attempt score (0-1) to calibrate to")
    if a["relevance"] not in ("topk", "strict"):
        raise ValueError(f"relevance {a['relevance']!r} is unknown: use topk or strict")
    prompt_rows = load_prompts(a["prompts"] or PROMPTS_FILE)
    if not 1 <= int(a["prompts_per_latent"]) <= len(prompt_rows):
        raise ValueError(f"prompts_per_latent must be 1..{len(prompt_rows)} (the prompt set's size)")
    default_model, api = steered_model()
    engine = api.engine
    if engine.dictionary is None:
        raise ValueError("the steered model has no dictionary: pass -M dictionary=... (or use a preset)")
    seed = int(a["seed"])
    notes: list[str] = []
    pinned = as_list(a["latents"])
    steered = steer_dictionary(engine) if steer_dictionary else engine.dictionary
    dictionary_id = engine.add_dictionary(steered) if steer_dictionary else engine.dictionary_id
    if pinned:
        for k in pinned:
            steered.check_latent(k)
        chosen = pinned
    elif steer_dictionary:
        chosen = list(range(steered.d_sae))
    else:
        ratings = None
        if a["concreteness"]:
            ratings = run_async(rate_concreteness(a["concreteness"], dict(engine.dictionary.labels)))
        else:
            notes.append("concreteness filter skipped: no -T concreteness=MODEL given")
        messages = [[{"role": "user", "content": p["prompt"]}] for p in prompt_rows]
        sampled = sample_latents(engine, int(a["n_latents"]), messages, seed, a["relevance"], ratings)
        chosen = sampled.latents
        notes += sampled.notes
        notes.append(f"latent filters dropped {sampled.dropped}")
    generation = {"max_tokens": int(a["max_tokens"]), "temperature": float(a["temperature"])}
    calibrator = Calibrator(
        api, [p["prompt"] for p in prompt_rows], float(a["target"]), int(a["calibration_trials"]), generation, a["threshold_cache"], seed, dictionary_id
    )
    labels = {k: steered.label(k) or f"latent {k}" for k in chosen}
    return Setup(default_model, api, prompt_rows, chosen, labels, calibrator, generation, int(a["prompts_per_latent"]), seed, notes)


def run_async(coro):
    """Run a coroutine from sync code, also when an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def build_samples(
    setup: Setup,
    boost_rule: str = "threshold",
    extra: dict[str, Any] | None = None,
    id_suffix: str = "",
    prompt_template: str | None = None,
) -> list[Sample]:
    """latents x prompts_per_latent samples; the same (latent, prompt, seed) triples for any
    variant built with the same seed, so variants compare trial by trial. `prompt_template`
    may use {prompt} and {label}; the judge always sees the plain prompt (metadata "prompt")."""
    samples = []
    for latent in setup.latents:
        rng = random.Random(sample_seed(setup.seed, "prompts", latent))
        for row in rng.sample(setup.prompts, setup.prompts_per_latent):
            label = setup.labels[latent]
            text = row["prompt"] if prompt_template is None else prompt_template.format(prompt=row["prompt"], label=label)
            samples.append(
                Sample(
                    id=f"l{latent}-{row['id']}{id_suffix}",
                    input=text,
                    metadata={
                        "latent": latent,
                        "label": label,
                        "prompt": row["prompt"],
                        "prompt_id": row["id"],
                        "seed": sample_seed(setup.seed, latent, row["id"]),
                        "mode": "add",
                        "boost_rule": boost_rule,
                        **(extra or {}),
                    },
                )
            )
    return samples


def dataset(samples: Iterable[Sample], name: str) -> MemoryDataset:
    return MemoryDataset(list(samples), name=name)


@solver
def steered_generate(calibrator: Calibrator, labels: dict[int, str], generation: dict[str, Any]) -> Solver:
    """Resolve the sample's boost (threshold, zero, fixed or sweep level), then generate with the
    steering (and any ablation) in `extra_body`."""

    async def solve(state: TaskState, generate: Generate) -> TaskState:
        md = state.metadata
        latent, rule = md["latent"], md["boost_rule"]
        if rule in ("threshold", "sweep"):
            result = await calibrator.threshold(latent, md["label"])
            md.update(threshold=result.threshold, calibration_trials=result.trials, calibration_score=result.score)
        if rule == "threshold":
            md["boost"] = md["threshold"]
        elif rule == "sweep":
            import numpy as np

            thresholds = list((await calibrator.all_thresholds(labels)).values())
            md["boost"] = max(0.0, float(np.mean(thresholds) + md["level"] * np.std(thresholds)))
        elif rule == "zero":
            md["boost"] = 0.0
        interventions = [Intervention(latent, float(md["boost"]), md.get("mode", "add"))] if md["boost"] else []
        interventions += [Intervention(k, 0.0, "clamp") for k in md.get("ablated", [])]
        steering = steering_to_extra_body(interventions, calibrator.dictionary_id)
        return await generate(state, extra_body=steering, seed=md["seed"], **generation)

    return solve
