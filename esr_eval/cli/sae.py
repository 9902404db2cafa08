"""`esr-eval train-sae` and `esr-eval label-sae`."""

from __future__ import annotations

import argparse

from esr_eval.cli.common import DTYPES
from esr_eval.config import DEFAULT_MODEL_NAME, GENERATION, SAE_RECIPE


def _relabel(args: argparse.Namespace) -> int:
    from esr_eval.training.sae.recipe import label_sae

    label_sae(args)
    return 0


def _run(args: argparse.Namespace) -> int:
    from esr_eval.training.sae.recipe import train_sae

    train_sae(args)
    return 0


def add_train_sae(sub) -> None:
    r = SAE_RECIPE
    p = sub.add_parser("train-sae", help="train a TopK SAE on a model's own answers (sae-lens format, labelled)")
    p.add_argument("--model", default=DEFAULT_MODEL_NAME, help="preset, hub id, folder or .gguf file")
    p.add_argument("--layer", type=int, required=True, help="decoder layer whose output the SAE reads")
    p.add_argument("--width", type=int, default=r.width, help="number of latents")
    p.add_argument("--k", type=int, default=r.k, help="active latents per token (TopK)")
    p.add_argument("--tokens", type=int, default=r.tokens, help="training tokens (held-out text comes on top)")
    p.add_argument("--out", required=True, help="output folder (replaced atomically)")
    p.add_argument("--epochs", type=int, default=r.epochs)
    p.add_argument("--batch-size", type=int, default=r.batch_size)
    p.add_argument("--lr", type=float, default=r.lr)
    p.add_argument("--aux-coefficient", type=float, default=r.aux_coefficient, help="weight of the TopK dead-latent loss")
    p.add_argument("--dead-window", type=int, default=r.dead_window, help="tokens without firing before a latent counts as dead")
    p.add_argument("--seed", type=int, default=r.seed)
    p.add_argument("--dtype", default=r.dtype, choices=DTYPES,
                   help="model dtype for generating the corpus and collecting activations")
    p.add_argument("--device", default="cpu")
    p.add_argument("--gen-batch", type=int, default=r.gen_batch, help="prompts generated per batch")
    p.add_argument("--generation-threads", type=int,
                   help="torch threads while generating (1 is fastest on a CPU shared with other jobs)")
    p.add_argument("--max-new-tokens", type=int, default=r.max_new_tokens)
    p.add_argument("--temperature", type=float, default=GENERATION.temperature)
    p.add_argument("--repetition-penalty", type=float, help="default: the preset's")
    p.add_argument("--pydoc-share", type=float, default=r.pydoc_share, help="share of tokens from Python's pydoc topics")
    p.add_argument("--heldout-share", type=float, default=r.heldout_share, help="held-out tokens, as a share of --tokens")
    p.add_argument("--max-norm-ratio", type=float, default=r.max_norm_ratio, help="drop positions above this x median norm")
    p.add_argument("--ce-docs", type=int, default=r.ce_docs, help="held-out documents for CE loss recovered (0: skip)")
    p.add_argument("--n-examples", type=int, default=r.n_examples, help="top examples per latent for labels")
    p.add_argument("--labeler", help="Inspect model that writes labels from snippets (e.g. openai/gpt-4o-mini)")
    p.set_defaults(func=_run)


def add_label_sae(sub) -> None:
    lab = sub.add_parser("label-sae", help="relabel an SAE written by train-sae (offline or with an LLM)")
    lab.add_argument("--sae", required=True, help="folder written by train-sae")
    lab.add_argument("--labeler", help="Inspect model that writes labels from snippets (e.g. openai/gpt-4o-mini)")
    lab.add_argument("--n-examples", type=int, default=SAE_RECIPE.n_examples, help="top examples per latent for token labels")
    lab.add_argument("--tokens", type=int, help="label from the first N tokens of the training corpus (default: all)")
    lab.add_argument("--dtype", choices=DTYPES, help="dtype for regenerating the corpus and activations (default: training's)")
    lab.set_defaults(func=_relabel)
