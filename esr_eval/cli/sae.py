"""`esr-eval train-sae` and `esr-eval label-sae`."""

from __future__ import annotations

import argparse

from esr_eval.cli.common import DTYPES
from esr_eval.config import DEFAULT_MODEL_NAME, GENERATION


def _relabel(args: argparse.Namespace) -> int:
    from esr_eval.training.sae.recipe import label_sae

    label_sae(args)
    return 0


def _run(args: argparse.Namespace) -> int:
    from esr_eval.training.sae.recipe import train_sae

    train_sae(args)
    return 0


def add_train_sae(sub) -> None:
    p = sub.add_parser("train-sae", help="train a TopK SAE on a model's own answers (sae-lens format, labelled)")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="preset, hub id, folder or .gguf file")
    p.add_argument("--layer", type=int, required=True, help="decoder layer whose output the SAE reads")
    p.add_argument("--width", type=int, default=4608, help="number of latents")
    p.add_argument("--k", type=int, default=32, help="active latents per token (TopK)")
    p.add_argument("--tokens", type=int, default=500_000, help="training tokens (held-out text comes on top)")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--aux-coefficient", type=float, default=1.0, help="weight of the TopK dead-latent loss")
    p.add_argument("--dead-window", type=int, default=20_000, help="tokens without firing before a latent counts as dead")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="bfloat16", choices=DTYPES,
                   help="model dtype for generating the corpus and collecting activations")
    p.add_argument("--device", default="cpu")
    p.add_argument("--gen-batch", type=int, default=64, help="prompts generated per batch")
    p.add_argument("--generation-threads", type=int,
                   help="torch threads while generating (1 is fastest on a CPU shared with other jobs)")
    p.add_argument("--max-new-tokens", type=int, default=192)
    p.add_argument("--temperature", type=float, default=GENERATION.temperature)
    p.add_argument("--repetition-penalty", type=float, help="default: the preset's")
    p.add_argument("--pydoc-share", type=float, default=0.0, help="share of tokens from Python's pydoc topics")
    p.add_argument("--heldout-share", type=float, default=0.05, help="held-out tokens, as a share of --tokens")
    p.add_argument("--max-norm-ratio", type=float, default=10.0, help="drop positions above this x median norm")
    p.add_argument("--ce-docs", type=int, default=64, help="held-out documents for CE loss recovered (0: skip)")
    p.add_argument("--n-examples", type=int, default=20, help="top examples per latent for labels")
    p.add_argument("--labeler", help="Inspect model that writes labels from snippets (e.g. openai/gpt-4o-mini)")
    p.set_defaults(func=_run)


def add_label_sae(sub) -> None:
    lab = sub.add_parser("label-sae", help="relabel an SAE written by train-sae (offline or with an LLM)")
    lab.add_argument("--sae", required=True, help="folder written by train-sae")
    lab.add_argument("--labeler", help="Inspect model that writes labels from snippets (e.g. openai/gpt-4o-mini)")
    lab.add_argument("--n-examples", type=int, default=20, help="top examples per latent for token labels")
    lab.add_argument("--tokens", type=int, help="label from the first N tokens of the training corpus (default: all)")
    lab.add_argument("--dtype", choices=DTYPES, help="dtype for regenerating the corpus and activations (default: training's)")
    lab.set_defaults(func=_relabel)
