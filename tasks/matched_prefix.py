"""esr_eval/matched_prefix: after a restart, does the answer stay on topic under the push because
of the restart, or only because of the recent on-topic tokens?

Each steered answer that restarts is cut just after its restart plus `on_topic_tokens` tokens,
and continued, with one seed, under three conditions: "restart" (that prefix, push on),
"matched" (what came before the restart, then the same on-topic tokens, without the restart's
words; push on) and "off" (the restart prefix, push off). The judge reads the continuation alone;
its score is the final attempt's.
"""

from __future__ import annotations

from typing import Any

from inspect_ai import Task, task

from esr_eval.config import CONTINUATION
from esr_eval.errors import UsageError
from esr_eval.sampling.prefixes import (
    flagged_restarts,
    restart_prefixes,
    validation_restarts,
)
from esr_eval.scorers import grouped_esr_metrics
from esr_eval.scorers.attempts import JUDGED_CONTINUATION
from esr_eval.scorers.metrics import paired_metrics
from esr_eval.tasks.continuation import (
    SAMPLING_ARGS,
    choose,
    pair_samples,
    prepare_on,
    refuse_args,
    source_answers,
)
from esr_eval.tasks.task_builder import esr_task
from esr_eval.tasks.task_setup import prepare

CONDITIONS = ["restart", "matched", "off"]
COMPARISONS = [("restart", "matched"), ("restart", "off"), ("matched", "off")]


@task
def matched_prefix(
    source: str | None = None,
    on_topic_tokens: int = CONTINUATION.on_topic_tokens,
    n_answers: int | None = None,
    **common: Any,
) -> Task:
    """Continue restarting answers from just after the restart, against a matched prefix without it.

    Args:
      source: steered eval logs (file or folder) or a prefix set (.jsonl); their answers that
        restart are used, each with its own latent and boost. Default: the written restarting
        answers of the judge-validation set, pushed by the task's sampled latents (calibrated
        thresholds; answer i gets latent i mod n_latents).
      on_topic_tokens: tokens after the restart kept in both prefixes (k).
      n_answers: restarting answers to use, drawn with the seed (default: all).
    """
    own = ("source", "on_topic_tokens", "n_answers")
    if int(on_topic_tokens) < 1:
        raise UsageError("on_topic_tokens must be at least 1")
    n = None if n_answers is None else int(n_answers)
    if source:
        refuse_args("matched_prefix", common, SAMPLING_ARGS, "reads its latents, boosts and prompts from the source answers")
        answers = [a for a in source_answers(source, str(source)) if a.restart_start is not None]
        if not answers:
            raise UsageError(f"no answer in {source} restarts: pass logs with multi-attempt answers, or leave -T source out for the written set")
        setup = prepare_on("matched_prefix", common, own, answers)
        pushes = {a.id: (a.latent, a.label, {"boost": a.boost, "boost_rule": "given"}) for a in answers}
    else:
        setup = prepare("matched_prefix", common, own)
        answers = validation_restarts()
        latents = [setup.latents[i % len(setup.latents)] for i in range(len(answers))]
        pushes = {a.id: (k, setup.labels[k], {"boost_rule": "threshold"}) for a, k in zip(sorted(answers, key=lambda a: a.id), latents)}
    tokenizer = setup.api.engine.tokenizer
    usable, with_restart_words = [], 0
    for a in choose(answers, n, setup.args.seed):
        cut = restart_prefixes(a, tokenizer, int(on_topic_tokens))
        if cut is None:
            continue
        if flagged_restarts(cut[1]):  # the matched prefix must hold no restart
            with_restart_words += 1
            continue
        usable.append((a, cut))
    setup.notes.append(
        f"{len(usable)} restarting answers used; {with_restart_words} dropped because their matched prefix still "
        "reads as a restart"
    )
    samples = []
    for a, (restart, matched) in usable:
        latent, label, push = pushes[a.id]
        conditions = [
            {"condition": "restart", "prefix": restart, **push},
            {"condition": "matched", "prefix": matched, **push},
            {"condition": "off", "prefix": restart, **push, "boost_rule": "zero"},
        ]
        samples += pair_samples(setup, a, conditions, "matched_prefix", latent=latent, label=label, judged=JUDGED_CONTINUATION,
                                on_topic_tokens=int(on_topic_tokens))  # fmt: skip
    metrics = [paired_metrics(CONDITIONS, COMPARISONS), *grouped_esr_metrics("condition", ["n", "judge_errors"], include_all=False)]
    return esr_task(setup, samples, "matched_prefix", metrics=metrics, headline="continuation_score_diff[restart-matched]")
