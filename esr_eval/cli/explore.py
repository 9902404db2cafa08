"""`esr-eval generate` (steered beside unsteered) and `esr-eval latents` (search labels)."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from esr_eval.steering.dictionary import FeatureDictionary

import argparse

from esr_eval.cli.common import add_model_args, check_latents_fit, console, engine_from
from esr_eval.config import GENERATION, TaskArgs


def _generate(args: argparse.Namespace) -> int:
    from rich.table import Table

    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.intervention import Intervention

    check_generate_args(args)
    check_latents_fit(args, None if args.latent is None else [args.latent], "--latent")
    engine = engine_from(args)
    if args.latent is not None and engine.dictionary is not None:
        engine.dictionary.check_latent(args.latent)
    steering = [Intervention(args.latent, args.value, args.mode)] if args.latent is not None else []

    def request(interventions: list[Intervention]) -> GenerationRequest:
        return GenerationRequest(
            [{"role": "user", "content": args.prompt}], interventions, args.max_tokens, args.temperature, seed=args.seed
        )

    plain, steered = engine.generate([request([]), request(steering)])
    label = engine.dictionary.label(args.latent) if steering and engine.dictionary else None
    table = Table(title=args.prompt, show_lines=True)
    table.add_column("unsteered")
    table.add_column(f"latent {args.latent} {args.mode} {args.value}" + (f" ({label})" if label else ""))
    table.add_row(plain.text, steered.text)
    console().print(table)
    return 0


def check_generate_args(args: argparse.Namespace) -> None:
    """Refuse settings that cannot generate, before the model loads."""
    import math

    from esr_eval.config import check_latent_list
    from esr_eval.errors import UsageError

    if not math.isfinite(args.value):
        raise UsageError(f"--value {args.value} is not a finite number: give the boost, e.g. --value 8")
    if args.max_tokens < 1:
        raise UsageError(f"--max-tokens {args.max_tokens} must be at least 1")
    if not (math.isfinite(args.temperature) and args.temperature >= 0):
        raise UsageError(f"--temperature {args.temperature} must be a number >= 0 (0: greedy)")
    if args.latent is not None:
        check_latent_list([args.latent], "--latent")


def _sampled(args: argparse.Namespace) -> tuple[FeatureDictionary, list[int], str]:
    """The latents `inspect eval esr_eval/steering_resistance` samples with these settings."""
    import asyncio

    from esr_eval.config import CONCRETENESS_OFF, CONCRETENESS_OFFLINE, TaskArgs
    from esr_eval.errors import UsageError
    from esr_eval.sampling.latents import (
        offline_concreteness,
        rated_concreteness,
        sample_latents,
    )
    from esr_eval.sampling.prompts import load_prompts

    settings = TaskArgs.parse(dict(n_latents=args.n_latents, seed=args.seed, relevance=args.relevance,
                                   concreteness=args.concreteness), "esr-eval latents --sampled")
    engine = engine_from(args)
    if engine.dictionary is None:
        raise UsageError("sampling latents needs a dictionary: use a preset or --dictionary")
    if settings.concreteness == CONCRETENESS_OFF:
        keep = None
    elif settings.concreteness == CONCRETENESS_OFFLINE:
        keep = offline_concreteness(engine.dictionary)
    else:
        from esr_eval.sampling.concreteness import rate_concreteness

        keep = rated_concreteness(asyncio.run(rate_concreteness(settings.concreteness, dict(engine.dictionary.labels))))
    messages = [[{"role": "user", "content": p.text}] for p in load_prompts(args.prompts)]
    sample = sample_latents(engine, settings.n_latents, messages, settings.seed, settings.relevance, keep)
    return engine.dictionary, sample.latents, f"dropped {sample.dropped}" + (f"; {'; '.join(sample.notes)}" if sample.notes else "")


def _latents(args: argparse.Namespace) -> int:
    from rich.table import Table

    from esr_eval.files import read_json
    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.steering.presets import get_preset

    caption = None
    if args.sampled:
        dictionary, chosen, caption = _sampled(args)
        hits = [(k, dictionary.label(k) or f"latent {k}") for k in chosen]
    else:
        preset = get_preset(args.dictionary or args.model)
        spec = preset.dictionary if preset else args.dictionary or args.model
        dictionary = load_dictionary(cast(str, spec), labels=args.labels)  # a preset names its dictionary
        hits = dictionary.search(args.search) if args.search else sorted(dictionary.labels.items())
    stats_file = dictionary.folder / "latent_stats.json" if dictionary.folder is not None else None
    stats = read_json(stats_file, "latent stats file") if stats_file is not None and stats_file.exists() else {}
    concept_columns = any(isinstance(v, dict) and "coherence" in v for v in stats.values())
    table = Table(title=f"{dictionary.name}: {len(hits)} latents", caption=caption)
    table.add_column("latent", justify="right")
    table.add_column("label")
    if concept_columns:
        for column in ("coherence", "token share", "nearest topic"):
            table.add_column(column)
    for k, text in hits[: args.limit]:
        row = [str(k), text]
        if concept_columns:
            s = stats.get(str(k), {})
            row += [f"{s.get('coherence', 0):.2f}", f"{s.get('token_share', 0):.2f}", str(s.get("topic", ""))]
        table.add_row(*row)
    console().print(table)
    return 0 if hits else 1


def add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="print a steered answer beside the unsteered one")
    add_model_args(gen)
    gen.add_argument("prompt")
    gen.add_argument("--latent", type=int)
    gen.add_argument("--value", type=float, default=8.0)
    gen.add_argument("--mode", default="add", choices=["add", "clamp"])
    gen.add_argument("--max-tokens", type=int, default=GENERATION.max_tokens // 2)
    gen.add_argument("--temperature", type=float, default=GENERATION.temperature)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=_generate)


def add_latents(sub) -> None:
    d = TaskArgs
    lat = sub.add_parser("latents", help="list or search a dictionary's latent labels")
    add_model_args(lat)
    lat.add_argument("--search", help="case-insensitive substring of the label")
    lat.add_argument("--limit", type=int, default=50)
    lat.add_argument("--sampled", action="store_true",
                     help="the latents an eval with these settings samples (loads the model for the relevance filter)")
    lat.add_argument("--n-latents", type=int, default=d.n_latents)
    lat.add_argument("--seed", type=int, default=d.seed)
    lat.add_argument("--relevance", default=d.relevance, choices=["topk", "strict"])
    lat.add_argument("--concreteness", default=d.concreteness, help='"offline", "none" or a model that rates labels')
    lat.add_argument("--prompts", help="prompt file (default: the packaged set)")
    lat.set_defaults(func=_latents)
