"""`esr-eval episodes LOG --detectors FILE`: off-topic-detector activity along multi-attempt answers.

For each multi-attempt episode the conversation is rebuilt (the messages sent, then the answer),
the detectors' activations are read per answer token with the same steering as generated (from
the logged request, else the sample metadata; none with --unsteered), summed over detectors, and
aligned at the token where the second attempt starts. Regions: off-topic (attempt 1, up to the
correction window), correction (a few tokens either side of the boundary), on-topic (the last
attempt after the window). Writes episodes.json (curve, per-region statistics, per-episode rows)
and episodes.png (mean and SEM over episodes).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _episodes(args: argparse.Namespace) -> int:
    from esr_eval.analysis.episodes import run_episodes

    out = args.out or Path(args.log).with_suffix("").as_posix() + "-episodes"
    r = run_episodes(
        args.log,
        args.detectors,
        out,
        args.unsteered,
        args.window,
        args.correction_tokens,
        args.scorer,
        args.batch_size,
        args.device,
        args.dtype,
    )
    reg, tests = r["regions"], r["tests"]["off_topic_vs_on_topic"]
    print(
        f"{r['n_episodes']} episodes ({r['n_unlocated']} without a located boundary); mean summed activation: "
        + ", ".join(f"{k} {v['mean']:.3g}" for k, v in reg.items())
        + f"; off-topic > on-topic: Wilcoxon p={tests['p_value']:.3g}, Cohen's d={tests['cohens_d']:.2f}"
    )
    print(f"wrote {out}/episodes.json and episodes.png")
    return 0


def add_episodes(sub) -> None:
    p = sub.add_parser(
        "episodes",
        help="detector activations along multi-attempt answers, aligned at the correction",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("log", help="one Inspect log file of a steered/... model")
    p.add_argument("--detectors", required=True, help="detectors JSON from `esr-eval find-detectors`")
    p.add_argument("--unsteered", action="store_true", help="read activations without the generation's steering")
    p.add_argument("--out", help="output folder (default: next to the log, LOG-episodes)")
    p.add_argument("--window", type=int, default=40, help="tokens either side of the boundary in the curve")
    p.add_argument("--correction-tokens", type=int, default=3, help="half-width of the correction region")
    p.add_argument("--scorer", help="attempts-judge scorer (default: the first in the log)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="override the log's -M device")
    p.add_argument("--dtype", help="override the log's -M dtype")
    p.set_defaults(func=_episodes)
