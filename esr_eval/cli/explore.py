"""`esr-eval generate` (steered beside unsteered) and `esr-eval latents` (search labels)."""

from __future__ import annotations

import argparse

from esr_eval.cli.common import add_model_args, console, engine_from
from esr_eval.config import DEFAULT_MODEL_NAME, GENERATION


def _generate(args: argparse.Namespace) -> int:
    from rich.table import Table

    from esr_eval.steering.engine import GenerationRequest
    from esr_eval.steering.intervention import Intervention

    engine = engine_from(args)
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


def _latents(args: argparse.Namespace) -> int:
    from rich.table import Table

    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.steering.presets import get_preset

    preset = get_preset(args.dictionary or args.model)
    spec = preset.dictionary if preset else args.dictionary or args.model
    dictionary = load_dictionary(spec, labels=args.labels)
    hits = dictionary.search(args.search) if args.search else sorted(dictionary.labels.items())
    table = Table(title=f"{dictionary.name}: {len(hits)} latents")
    table.add_column("latent", justify="right")
    table.add_column("label")
    for k, text in hits[: args.limit]:
        table.add_row(str(k), text)
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
    lat = sub.add_parser("latents", help="list or search a dictionary's latent labels")
    lat.add_argument("--model", default=DEFAULT_MODEL_NAME, help="preset whose dictionary to read")
    lat.add_argument("--dictionary", help="dictionary folder or preset")
    lat.add_argument("--labels")
    lat.add_argument("--search", help="case-insensitive substring of the label")
    lat.add_argument("--limit", type=int, default=50)
    lat.set_defaults(func=_latents)
