"""`esr-eval build-prefixes LOG...`: the prefix set of `prefill_detection` from steered eval logs
(how the shipped sets in esr_eval/assets/prefill/ were made)."""

from __future__ import annotations

import argparse

from esr_eval.config import CONTINUATION


def _build_prefixes(args: argparse.Namespace) -> int:
    from esr_eval.errors import UsageError
    from esr_eval.results.logs import short_model
    from esr_eval.sampling.prefixes import answers_from_logs, write_answers

    answers = answers_from_logs(args.logs)
    models = sorted({short_model(a.model or "") for a in answers})
    if len(models) > 1:
        raise UsageError(f"the logs hold answers of {', '.join(models)}: a prefix set is one model's own words, pass one model's logs")
    kept = [a for a in answers if a.first_score <= args.max_first_score]
    if not kept:
        raise UsageError(f"no steered answer in the logs went off topic (first score <= {args.max_first_score})")
    out = write_answers(args.out, sorted(kept, key=lambda a: a.id))
    restarting = sum(a.restart_start is not None for a in kept)
    print(f"wrote {len(kept)} off-topic answers of {models[0]} ({restarting} with a restart after the clean start) "
          f"out of {len(answers)} steered answers to {out}")  # fmt: skip
    return 0


def add_build_prefixes(sub) -> None:
    cmd = sub.add_parser("build-prefixes", help="the prefill_detection prefix set from steered eval logs")
    cmd.add_argument("logs", nargs="+", help="steering_resistance log file(s) or folder(s) of one model")
    cmd.add_argument("--max-first-score", type=float, default=CONTINUATION.max_first_score,
                     help="keep answers whose first attempt scored at most this (off topic)")
    cmd.add_argument("--out", required=True, help="prefix set (.jsonl), e.g. esr_eval/assets/prefill/smollm2-135m.jsonl")
    cmd.set_defaults(func=_build_prefixes)
