"""The `esr-eval` command: each subcommand lives in the module that does the work."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines `register(subparsers)`, which adds its parser and sets `func(args) -> int`.
COMMAND_MODULES = [
    "esr_eval.explore",
    "esr_eval.detectors",
    "esr_eval.calibration",
    "esr_eval.sae_training",
    "esr_eval.finetune.data",
    "esr_eval.finetune.train",
    "esr_eval.lm_eval_model",
    "esr_eval.analysis.report",
    "esr_eval.analysis.agreement",
    "esr_eval.analysis.episodes",
    "esr_eval.compare",
    "esr_eval.gate",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esr-eval", description="Endogenous steering resistance tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"esr-eval {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
