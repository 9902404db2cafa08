"""The real-negative pool (`esr_eval/assets/judge_validation/negatives/`): hundreds of real answers
of the embedded models, steered below, at and above their thresholds and not steered at all, that
no grader was built on. Almost none restarts, so a grader that splits one raises a false alarm.

    python -m esr_eval.judge_tools.negatives harvest LOG.eval ...   # add answers (see generate.sh)
    python -m esr_eval.judge_tools.negatives to-read                # answers a person must read
    esr-eval validate-judge --negatives                       # a grader's false-alarm figures

Labels: every answer with restart-like words (`RESTART_LIKE`, far broader than the grader's cues),
or that any grader split, is read by hand and labelled in `labels.jsonl` (attempt count, degenerate
or not, the restart phrase if it really restarts); every other answer is one attempt (none if
empty). The pool is split by latent: `dev` (a third; graders may be tuned on it) and `test`.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esr_eval.judge_tools.validation_set import SET_DIR, load_validation_set

POOL_DIR = SET_DIR / "negatives"
ANSWERS = POOL_DIR / "answers.jsonl"
LABELS = POOL_DIR / "labels.jsonl"
BANDS = ("unsteered", "below", "at", "above")  # steering strength against the latent's threshold
DEV_SHARE = 1 / 3

RESTART_LIKE = re.compile(
    r"\b(?:wait|hold on|hang on|sorry|apolog\w*|oops|whoops|start(?:ing)? (?:over|again)|try(?:ing)? again|"
    r"scratch that|mistakes?|wrong|off[- ]topic|off track|tangent|digress\w*|drift(?:ed|ing)|sidetrack\w*|"
    r"distracted|back to (?:the|your|my) (?:question|topic|point)|refocus|rephrase|redo|misunderstood|misread|"
    r"never mind|let me (?:try|start|rephrase|correct|redo|begin)|where was i|i mean|or rather|correction|"
    r"nonsense|irrelevant|unrelated|not what you asked)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Negative:
    id: str
    split: str
    band: str
    prompt: str
    label: str
    answer: str
    origin: dict[str, Any]
    attempts: int  # labelled attempt count (1 unless read and found otherwise; 0 for an empty answer)
    degraded: bool | None  # labelled degenerate; None where nobody read it
    read: bool  # read and labelled by hand

    @property
    def latent(self) -> tuple[str, Any]:
        return self.origin.get("model", ""), self.origin.get("latent")


def band_of(origin: dict[str, Any]) -> str:
    if origin.get("task") == "no_steering" or not origin.get("boost"):
        return "unsteered"
    level = origin.get("level")
    if level is None or abs(float(level)) < 1e-9:
        return "at"
    return "below" if float(level) < 0 else "above"


def split_of(model: str, latent: Any) -> str:
    """A latent's half, fixed by a hash of model and latent (answers added later keep their halves)."""
    digest = hashlib.sha256(f"{model}:{latent}".encode()).digest()
    return "dev" if digest[0] / 256 < DEV_SHARE else "test"


def validation_latents() -> set[tuple[str, Any]]:
    return {(r.origin.get("model", ""), r.origin.get("latent")) for r in load_validation_set() if not r.written}


def load_pool(split: str = "test", answers: Path = ANSWERS, labels: Path = LABELS) -> list[Negative]:
    """The pool's answers with their labels; `split` is "dev", "test" or "all"."""
    from esr_eval.files import read_jsonl

    labelled = {row["id"]: row for row in read_jsonl(labels)} if labels.exists() else {}
    pool = []
    for item in read_jsonl(answers):
        lab = labelled.get(item["id"])
        origin = item["origin"]
        negative = Negative(
            id=item["id"], split=split_of(origin.get("model", ""), origin.get("latent")), band=band_of(origin),
            prompt=item["prompt"], label=item["label"], answer=item["answer"], origin=origin,
            attempts=int(lab["attempts"]) if lab else (1 if item["answer"].strip() else 0),
            degraded=bool(lab["degraded"]) if lab and lab.get("degraded") is not None else None, read=lab is not None,
        )  # fmt: skip
        if split in ("all", negative.split):
            pool.append(negative)
    return pool


# ------------------------------------------------------------------ figures


@dataclass(frozen=True)
class Judged:
    """A grader's reply on one pool answer."""

    negative: Negative
    scores: list[float] | None  # attempt scores in order; None: judge error
    degraded_flag: bool  # the scorer's degraded flag on the answer

    @property
    def false_multi(self) -> bool:
        return self.scores is not None and len(self.scores) >= 2 and self.negative.attempts < 2

    @property
    def false_esr(self) -> bool:
        return self.false_multi and self.scores is not None and self.scores[-1] > self.scores[0]


@dataclass(frozen=True)
class PoolFigures:
    group: str  # "all", a model, or "model / band"
    n: int
    n_latents: int
    false_multi: Any  # esr_eval.results.stats.Estimate
    false_esr: Any
    degraded_agreement: Any  # over answers read by hand
    judge_errors: int


def pool_figures(judged: Sequence[Judged]) -> list[PoolFigures]:
    """False multi-attempt and false ESR rates (judge errors left out) and degraded-flag agreement
    (answers read by hand), each with a 95% interval clustered by latent; for the whole pool, each
    model, and each model and band."""
    from esr_eval.results.stats import clustered_rate

    def figures(name: str, rows: Sequence[Judged]) -> PoolFigures:
        ok = [j for j in rows if j.scores is not None]
        read = [j for j in rows if j.negative.degraded is not None]
        clusters = [j.negative.latent for j in ok]
        return PoolFigures(
            group=name, n=len(ok), n_latents=len(set(clusters)),
            false_multi=clustered_rate([float(j.false_multi) for j in ok], clusters),
            false_esr=clustered_rate([float(j.false_esr) for j in ok], clusters),
            degraded_agreement=clustered_rate(
                [float(j.degraded_flag == j.negative.degraded) for j in read], [j.negative.latent for j in read]
            ),
            judge_errors=len(rows) - len(ok),
        )  # fmt: skip

    out = [figures("all", judged)]
    models = sorted({j.negative.origin.get("model", "") for j in judged})
    for model in models:
        rows = [j for j in judged if j.negative.origin.get("model", "") == model]
        out.append(figures(model, rows))
        for band in BANDS:
            banded = [j for j in rows if j.negative.band == band]
            if banded:
                out.append(figures(f"{model} / {band}", banded))
    return out


# ------------------------------------------------------------------ building


def harvest(logs: Sequence[str]) -> list[dict[str, Any]]:
    """The answers of eval logs as pool rows, less the latents of the judge-validation set."""
    from esr_eval.judge_tools.validation_build import harvest as harvest_logs

    taken = validation_latents()
    return [row for row in harvest_logs(list(logs)) if (row["origin"]["model"], row["origin"]["latent"]) not in taken]


def to_read(pool: Sequence[Negative], split_by: dict[str, int] | None = None) -> list[Negative]:
    """Answers a person must read: restart-like words, or split by a grader (`split_by`: id ->
    attempt count a grader gave), and not yet labelled."""
    split_by = split_by or {}
    return [n for n in pool if not n.read and (RESTART_LIKE.search(n.answer) or split_by.get(n.id, 1) >= 2)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m esr_eval.judge_tools.negatives", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("harvest", help="add the answers of eval logs to answers.jsonl")
    h.add_argument("logs", nargs="+")
    sub.add_parser("to-read", help="list the answers with restart-like words that have no label yet")
    args = parser.parse_args(argv)
    if args.command == "harvest":
        from esr_eval.judge_tools.validation_build import add_answers

        add_answers(ANSWERS, harvest(args.logs))
        return 0
    for n in to_read(load_pool("all")):
        print(n.id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
