"""What every ESR task resolves before the eval starts: model, prompts, latents, calibration."""

from __future__ import annotations

import asyncio
import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import yaml
from inspect_ai.model import Model, get_model

from esr_eval.calibration.cache import ThresholdCache
from esr_eval.calibration.calibrator import Calibrator
from esr_eval.config import (
    CONCRETENESS_OFF,
    CONCRETENESS_OFFLINE,
    DEFAULT_MODEL,
    TaskArgs,
    check_latents_within,
)
from esr_eval.errors import UsageError
from esr_eval.provider import SteeredModelAPI, steered_api
from esr_eval.sampling.concreteness import rate_concreteness
from esr_eval.sampling.latents import (
    ConcretenessFilter,
    offline_concreteness,
    rated_concreteness,
    sample_latents,
)
from esr_eval.sampling.prompts import Prompt, load_prompts
from esr_eval.schema import FinetuneInfo
from esr_eval.steering.dictionary import DirectionSet, FeatureDictionary
from esr_eval.steering.engine import SteeringEngine
from esr_eval.steering.presets import (
    dictionary_spec,
    get_preset,
    local_dictionary_width,
)

EVAL_YAML = Path(__file__).parent / "eval.yaml"


# "N-X", as inspect_evals writes it: N moves when results stop being comparable, X when the interface changes
VERSION_FORM = re.compile(r"[1-9][0-9]*-[A-Z]+")


@functools.cache
def task_version(name: str) -> str:
    """The task's version in eval.yaml (the one place versions are written), in the "N-X" form."""
    listing = yaml.safe_load(EVAL_YAML.read_text())
    version = str(next(t["version"] for t in listing["tasks"] if t["name"] == name))
    if not VERSION_FORM.fullmatch(version):
        raise ValueError(f"{EVAL_YAML}: version {version!r} of task {name} is not in the N-X form (e.g. 2-A)")
    return version


def model_finetune_info(source: str) -> FinetuneInfo | None:
    """What fine-tuning recorded about a model: a merged folder's metrics, or a preset's adapter's."""
    preset = get_preset(source)
    return FinetuneInfo.of_model(preset.adapter if preset and preset.adapter else source)


def eval_model_args() -> dict[str, Any]:
    """The -M args of the running eval. Inspect drops them when no --model is given (it makes the
    "none/none" model without them), so they are read from the eval call on the stack, then from
    INSPECT_EVAL_MODEL_ARGS as Inspect itself would; {} outside an eval."""
    from inspect_ai._util.config import resolve_args
    from inspect_ai._util.constants import PKG_NAME

    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(f"{PKG_NAME}._eval.") and "model_args" in frame.f_locals:
            found = resolve_args(frame.f_locals["model_args"])
            if found:
                return found
            break
        frame = frame.f_back
    env = os.environ.get("INSPECT_EVAL_MODEL_ARGS")
    if env:
        from inspect_ai._util.config import parse_cli_args

        return parse_cli_args([arg.strip() for arg in env.split(" ")])
    return {}


def steered_model() -> tuple[Model | None, SteeredModelAPI]:
    """The evaluated model, or the embedded default when the user named none (then the Model
    is returned so the task can pin it; a user's --model is never overridden). The eval's -M args
    apply to the default as they would to `--model steered/smollm2-135m`."""
    active = get_model()
    if str(active) == "none/none":
        default = get_model(DEFAULT_MODEL, **eval_model_args())
        return default, steered_api(default)  # type: ignore[return-value]
    api = steered_api(active)
    if api is None:
        raise UsageError(
            f"esr_eval tasks steer a local model, but {active} is not one: "
            "use --model steered/<preset | hub id | path> (e.g. steered/smollm2-135m)"
        )
    return None, api


@dataclass
class Setup:
    args: TaskArgs
    default_model: Model | None
    api: SteeredModelAPI
    prompts: list[Prompt]
    latents: list[int]
    labels: dict[int, str]
    calibrator: Calibrator
    notes: list[str] = field(default_factory=list)


def run_async(coro):
    """Run a coroutine from sync code, also when an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def concreteness_filter(choice: str, dictionary: FeatureDictionary) -> tuple[ConcretenessFilter | None, str | None]:
    """(filter, note) for -T concreteness: "offline" reads the dictionary's latent_stats.json,
    "none" keeps every latent, anything else names a model that rates the labels."""
    if choice == CONCRETENESS_OFF:
        return None, "concreteness filter off (-T concreteness=none)"
    if choice == CONCRETENESS_OFFLINE and isinstance(dictionary, DirectionSet):
        return None, (
            f"offline concreteness filter skipped: {dictionary.name} is a vector set, whose labels are the topics its vectors "
            "were built from (pass -T concreteness=MODEL to have a model rate them)"
        )
    if choice == CONCRETENESS_OFFLINE:
        found = offline_concreteness(dictionary)
        if found is None:
            return None, (
                "offline concreteness filter skipped: the dictionary has no concept stats in latent_stats.json "
                "(relabel it with `esr-eval label-sae`, or pass -T concreteness=MODEL)"
            )
        return found, None
    return rated_concreteness(run_async(rate_concreteness(choice, dict(dictionary.labels)))), None


def check_against_width(a: TaskArgs, width: int | None) -> None:
    """Pinned latents and n_latents against the dictionary's width, read before the model loads."""
    if width is None:
        return
    check_latents_within(a.latents or [], width, "-T latents")
    if not a.latents and a.n_latents > width:
        raise UsageError(f"-T n_latents={a.n_latents} exceeds the dictionary's {width} latents: ask for fewer")


def check_context(engine: SteeringEngine, prompts: list[Prompt], max_tokens: int) -> None:
    """Every prompt leaves room for a full answer in the model's context, so none is cut short."""
    limit = engine.context_length()
    if limit is None:
        return
    for p in prompts:
        used = len(engine.prompt_ids([{"role": "user", "content": p.text}]))
        if used + max_tokens > limit:
            raise UsageError(
                f"prompt {p.id} takes {used} tokens, which with max_tokens={max_tokens} exceeds the model's context of "
                f"{limit} tokens: shorten the prompt or lower -T max_tokens to {max(limit - used, 0)} or less"
            )


def prepare(
    task: str,
    args: dict[str, Any],
    own: tuple[str, ...] = (),
    steer_dictionary: Callable[[SteeringEngine], FeatureDictionary] | None = None,
) -> Setup:
    """Check the task args (unknown names refused, with the accepted ones listed), then resolve
    the model, prompts and latents, raising one-line errors before any generation.
    `steer_dictionary` builds a second dictionary (e.g. a direction set) whose latents are
    steered instead of sampled SAE latents."""
    a = TaskArgs.parse(args, task, own)
    prompts = load_prompts(a.prompts)
    if a.prompts_per_latent > len(prompts):
        raise UsageError(f"prompts_per_latent must be 1..{len(prompts)} (the prompt set's size)")
    ThresholdCache(a.threshold_cache).check_writable()
    default_model, api = steered_model()
    api.check_source()
    if not steer_dictionary:
        check_against_width(a, local_dictionary_width(dictionary_spec(api.source, api.args.dictionary)))
    engine = api.engine
    if engine.dictionary is None:
        raise UsageError("the steered model has no dictionary: pass -M dictionary=... (or use a preset)")
    check_context(engine, prompts, a.max_tokens)
    notes: list[str] = []
    steered = steer_dictionary(engine) if steer_dictionary else engine.dictionary
    dictionary_id = engine.add_dictionary(steered) if steer_dictionary else engine.dictionary_id
    tuned = model_finetune_info(api.source)
    trained_on = frozenset(tuned.training_latents) if tuned and not steer_dictionary else frozenset()
    if a.latents:
        for k in a.latents:
            steered.check_latent(k)
        overlap = sorted(set(a.latents) & trained_on)
        if overlap:
            raise UsageError(
                f"latents {overlap} were steered in this model's fine-tuning: evaluate it on other latents "
                "(leave -T latents out to sample held-out ones)"
            )
        chosen = a.latents
    elif steer_dictionary:
        chosen = list(range(steered.d_sae))
    else:
        concreteness, note = concreteness_filter(a.concreteness, engine.dictionary)
        if note:
            notes.append(note)
        messages = [[{"role": "user", "content": p.text}] for p in prompts]
        sampled = sample_latents(engine, a.n_latents, messages, a.seed, a.relevance, concreteness, exclude=trained_on)
        chosen = sampled.latents
        notes += sampled.notes
        notes.append(f"latent filters dropped {sampled.dropped}")
    calibrator = Calibrator(
        api, [p.text for p in prompts], a.target, a.calibration_trials, a.generation(), a.threshold_cache, a.seed, dictionary_id,
        rounds=a.calibration_rounds,
    )
    labels = {k: steered.label(k) or f"latent {k}" for k in chosen}
    return Setup(a, default_model, api, prompts, chosen, labels, calibrator, notes)
