"""`esr-eval build-vectors`: contrastive steering vectors (a direction set) from topic passages
against neutral text, at one layer of a model; steer with them as with SAE latents
(`-M dictionary=OUT`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from esr_eval.cli.common import add_model_args, console, engine_from
from esr_eval.steering.presets import VECTOR_SETS

SOURCES = VECTOR_SETS / "sources"  # the texts the shipped set was built from


def _build_vectors(args: argparse.Namespace) -> int:
    from esr_eval.sampling.prompts import prompt_texts
    from esr_eval.steering.directions import build_vector_set, read_topics

    topics = read_topics(args.topics)  # both files are read before the model loads
    neutral = prompt_texts(args.neutral)
    lm = engine_from(args)
    out = build_vector_set(lm, topics, neutral, args.name or Path(args.out).name, args.out, args.model)
    console().print(f"{len(topics)} topic vectors at layer {lm.layer} against {len(neutral)} neutral texts -> {out}")
    return 0


def add_build_vectors(sub) -> None:
    cmd = sub.add_parser(
        "build-vectors",
        help="contrastive steering vectors from topic passages against neutral text (a direction set)",
        description=__doc__,
    )
    add_model_args(cmd)
    cmd.add_argument("--topics", default=str(SOURCES / "topics.jsonl"), help="jsonl of {id, label, passages} (default: %(default)s)")
    cmd.add_argument("--neutral", default=str(SOURCES / "neutral.txt"), help="neutral texts, one a line (default: %(default)s)")
    cmd.add_argument("--out", required=True, help="output folder (replaced atomically); steer with -M dictionary=OUT")
    cmd.add_argument("--name", help="the set's name (default: the folder's name)")
    cmd.set_defaults(func=_build_vectors)
