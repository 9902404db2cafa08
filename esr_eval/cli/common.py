"""What several commands share: the model arguments, the engine they name, a console."""

from __future__ import annotations

import argparse
from typing import Any

from esr_eval.config import DEFAULT_MODEL_NAME, DTYPES, ENGINES, ModelArgs


def add_model_args(parser: argparse.ArgumentParser, dtype: str | None = ModelArgs.dtype) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="preset, hub id, folder or .gguf file")
    parser.add_argument("--dictionary", help="SAE / direction-set folder, sae-lens RELEASE/SAE_ID or preset")
    parser.add_argument("--layer", type=int, help="override the dictionary's hook layer")
    parser.add_argument("--labels", help="labels file (JSON or CSV, index -> text)")
    parser.add_argument("--dtype", default=dtype, choices=DTYPES, help="default: the preset's, else bfloat16 where the hardware has it, float32 on other CPUs")
    parser.add_argument("--device", default=ModelArgs.device)
    parser.add_argument("--engine", default=ModelArgs.engine, choices=ENGINES)
    parser.add_argument("--device-map", help='"auto": shard the model over the devices (accelerate)')
    parser.add_argument("--max-memory", help="per-device cap with --device-map, e.g. 0=70GiB,1=70GiB,cpu=200GiB")


def latent_indices(text: str) -> list[int]:
    """argparse type of `--latents 12,345`: the list, or a one-line error before any model loads."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    bad = [item for item in items if not item.lstrip("-").isdigit() or int(item) < 0]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{text!r}: pass latent indices as comma-separated integers >= 0, e.g. 12,345")
    return [int(item) for item in items]


def check_latents_fit(args: argparse.Namespace, latents: list[int] | None, flag: str = "--latents") -> None:
    """Latent indices against the width of the dictionary `--model`/`--dictionary` name, read from
    its files before the model loads (a sae-lens release is checked once it has loaded)."""
    from esr_eval.config import check_latents_within
    from esr_eval.steering.presets import dictionary_spec, local_dictionary_width

    if latents:
        check_latents_within(latents, local_dictionary_width(dictionary_spec(args.model, args.dictionary)), flag)


def model_args(args: argparse.Namespace) -> dict[str, Any]:
    """The -M arguments of the steered provider that the command line gave."""
    given = dict(dictionary=args.dictionary, layer=args.layer, labels=args.labels, dtype=args.dtype, device=args.device,
                 engine=args.engine, device_map=args.device_map, max_memory=args.max_memory)  # fmt: skip
    return {k: v for k, v in given.items() if v is not None}


def engine_from(args: argparse.Namespace):
    from esr_eval.steering.engine import EngineSpec
    from esr_eval.steering.load import load_spec
    from esr_eval.steering.models import check_device
    from esr_eval.steering.presets import check_model_source

    a = ModelArgs.parse(model_args(args))
    check_model_source(args.model)
    check_device(a.device)
    return load_spec(EngineSpec.of(args.model, a))


def console():
    """A rich console; when the output is not a terminal (CI logs, files) it is 140 columns wide
    instead of rich's default 80, so tables are not cut."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=140)
