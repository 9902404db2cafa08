"""`esr-eval episodes LOG --detectors FILE`: off-topic-detector activity along multi-attempt answers.

For each multi-attempt episode the conversation is rebuilt (the messages sent, then the answer),
the detectors' activations are read per answer token with the same steering as generated (from
the logged request, else the sample metadata; none with --unsteered), summed over detectors, and
aligned at the token where the second attempt starts. Regions: off-topic (attempt 1, up to the
correction window), correction (a few tokens either side of the boundary), on-topic (the last
attempt after the window). Writes episodes.json (curve, per-region statistics, per-episode rows)
and episodes.png (mean and SEM over episodes).

Baseline: steered answers that never restarted (one attempt) and went off topic (it scored at
most --off-topic-max), read the same way, each over as many tokens as the episodes' median
off-topic region. Off-topic regions above this baseline mean the detectors fire before a
restart, not merely on off-topic text (a one-sided Mann-Whitney test and Cohen's d). With
--unsteered both are read without the steering.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from esr_eval.config import OFF_TOPIC_MAX_SCORE


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
        args.off_topic_max,
    )
    reg, tests = r["regions"], r["tests"]["off_topic_vs_on_topic"]
    base = r["no_restart"]
    print(
        f"{r['n_episodes']} episodes ({r['n_unlocated']} without a located boundary); mean summed activation: "
        + ", ".join(f"{k} {v['mean']:.3g}" for k, v in reg.items())
        + f"; off-topic > on-topic: Wilcoxon p={tests['p_value']:.3g}, Cohen's d={tests['cohens_d']:.2f}"
    )
    if base["n"]:
        vs = base["tests"]["off_topic_vs_no_restart"]
        print(
            f"{base['n']} off-topic answers without a restart: mean {base['mean']:.3g} over their first {base['span_tokens']} tokens; "
            f"off-topic (episodes) > no restart: Mann-Whitney p={vs['p_value']:.3g}, Cohen's d={vs['cohens_d']:.2f}"
        )
    else:
        print(f"no steered answer without a restart scored <= {args.off_topic_max:g}: no no-restart baseline")
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
    p.add_argument("--off-topic-max", type=float, default=OFF_TOPIC_MAX_SCORE,
                   help="a one-attempt answer scoring at most this joins the no-restart baseline (default: %(default)s)")
    p.add_argument("--scorer", help="attempts-judge scorer (default: the first in the log)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", help="override the log's -M device")
    p.add_argument("--dtype", help="override the log's -M dtype")
    p.set_defaults(func=_episodes)
