"""The `esr-eval` command: a lazy table of subcommands.

Only the module of the command being run is imported (and each imports its heavy libraries
inside its handler), so `esr-eval --help`, `esr-eval gate` and `esr-eval report` start without
torch or lm-eval.

Exit codes shared by every command: 0 success, 2 bad input (a one-line message names the fix),
5 an unexpected crash (with its traceback); `gate` adds 1, 3 and 4 (see `esr-eval gate --help`).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

EXIT_USAGE = 2
EXIT_CRASH = 5

# command -> (module, function adding its parser, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "generate": ("esr_eval.cli.explore", "add_generate", "print a steered answer beside the unsteered one"),
    "latents": ("esr_eval.cli.explore", "add_latents", "list or search a dictionary's latent labels"),
    "calibrate": ("esr_eval.cli.calibrate", "add_calibrate", "find (and cache) each latent's boost threshold"),
    "find-detectors": ("esr_eval.cli.detectors", "add_find_detectors", "discover off-topic detector latents"),
    "build-vectors": ("esr_eval.cli.vectors", "add_build_vectors", "contrastive steering vectors (topic passages vs neutral text)"),
    "train-sae": ("esr_eval.cli.sae", "add_train_sae", "train a TopK SAE on a model's own answers (sae-lens format)"),
    "label-sae": ("esr_eval.cli.sae", "add_label_sae", "relabel an SAE written by train-sae"),
    "make-finetune-data": ("esr_eval.cli.finetune", "add_make_data", "write self-correction fine-tuning rows (jsonl)"),
    "finetune": ("esr_eval.cli.finetune", "add_finetune", "LoRA-tune a model on self-correction rows, merged"),
    "build-prefixes": ("esr_eval.cli.prefixes", "add_build_prefixes", "the prefill_detection prefix set from steered eval logs"),
    "capability": ("esr_eval.cli.capability", "add_capability", "lm-eval accuracy plain vs steered vs ablated"),
    "compare": ("esr_eval.cli.compare", "add_compare", "run one task over several models and compare them"),
    "report": ("esr_eval.cli.report", "add_report", "markdown + HTML comparison report and plots over logs"),
    "agreement": ("esr_eval.cli.agreement", "add_agreement", "pairwise agreement of the judges that scored a log"),
    "episodes": ("esr_eval.cli.episodes", "add_episodes", "detector activity along multi-attempt answers"),
    "gate": ("esr_eval.cli.gate", "add_gate", "CI gate over logs: bounds, status and change against a baseline"),
    "validate-judge": ("esr_eval.cli.judge", "add_validate_judge", "score graders on the labelled judge-validation set"),
    "train-grader": ("esr_eval.cli.judge", "add_train_grader", "retrain the offline grader's restart classifier"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser of `command` (its module imported), stubs for the others."""
    parser = argparse.ArgumentParser(prog="esr-eval", description="Endogenous steering resistance tools.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, adder, help_text) in COMMANDS.items():
        if name == command:
            getattr(importlib.import_module(module), adder)(sub)
        else:
            sub.add_parser(name, help=help_text)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"esr-eval {args.command}: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception:  # a crash must not look like a result (the gate's 1 is a breached bound)
        traceback.print_exc()
        print(f"esr-eval {args.command}: crashed (exit {EXIT_CRASH}); the traceback is above", file=sys.stderr)
        return EXIT_CRASH


if __name__ == "__main__":
    sys.exit(main())
