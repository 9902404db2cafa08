"""esr_eval/prefill_detection: does the model notice an off-topic start it is handed as its own?

The start of a steered answer that went off topic (first attempt scored at most
`max_first_score`) is cut at a sentence end within `prefix_tokens` tokens and before any restart,
put in the assistant's turn, and continued WITHOUT steering, under paired conditions that share
each prefix's seed: plain; the off-topic detectors clamped to 0; as many frequency-matched random
latents clamped to 0. The judge reads prefix + continuation as one answer and counts only the
attempts that start in the continuation.
"""

from __future__ import annotations

from typing import Any

from inspect_ai import Task, task

from esr_eval.config import CONTINUATION
from esr_eval.detectors.controls import control_frequencies, matched_controls
from esr_eval.errors import UsageError
from esr_eval.results.logs import short_model
from esr_eval.sampling.prefixes import (
    prefill_prefix,
    read_answers,
    shipped_prefix_set,
    token_count,
)
from esr_eval.schema import DetectorsFile
from esr_eval.scorers import grouped_esr_metrics
from esr_eval.scorers.attempts import JUDGED_ANSWER
from esr_eval.scorers.metrics import paired_metrics
from esr_eval.tasks.ablation import check_detectors
from esr_eval.tasks.continuation import (
    CALIBRATION_ARGS,
    SAMPLING_ARGS,
    choose,
    evaluated_model,
    pair_samples,
    prepare_on,
    refuse_args,
    source_answers,
)
from esr_eval.tasks.task_builder import esr_task

C = CONTINUATION
COMPARISONS = [("detectors", "plain"), ("random", "plain"), ("detectors", "random")]


def default_prefix_set() -> str:
    model = short_model(f"steered/{evaluated_model()}")
    path = shipped_prefix_set(model)
    if not path.is_file():
        raise UsageError(
            f"no prefix set ships for {model}: pass -T source=LOG_OR_DIR (logs of its steering_resistance runs) "
            "or build one with `esr-eval build-prefixes LOG... --out FILE`"
        )
    return str(path)


@task
def prefill_detection(
    source: str | None = None,
    prefix_tokens: int = C.prefix_tokens,
    max_first_score: float = C.max_first_score,
    n_prefixes: int | None = None,
    detectors: str | None = None,
    n_sets: int = C.control_sets,
    control_seed: int = 0,
    **common: Any,
) -> Task:
    """Continue off-topic steered starts unsteered; count restarts in the continuation.

    Args:
      source: steered eval logs (file or folder) or a prefix set (.jsonl); default: the set
        shipped for the model (made from its own steering_resistance answers).
      prefix_tokens: token budget of a prefix (whole sentences, cut before any restart).
      max_first_score: a source answer went off topic when its first attempt scored at most this.
      n_prefixes: prefixes to use, drawn with the seed (default: all).
      detectors: detectors file (`esr-eval find-detectors`); adds the ablated and random conditions.
      n_sets: random-latent sets (frequency-matched to the detectors), one run per pair each.
      control_seed: seed of the random sets.
    """
    own = ("source", "prefix_tokens", "max_first_score", "n_prefixes", "detectors", "n_sets", "control_seed")
    refuse_args("prefill_detection", common, SAMPLING_ARGS + CALIBRATION_ARGS, "reads its latents and prompts from the source answers and steers nothing")
    if int(prefix_tokens) < 1 or int(n_sets) < 1:
        raise UsageError("prefix_tokens and n_sets must be at least 1")
    found = DetectorsFile.read(detectors) if detectors else None  # before the model loads
    answers = source_answers(source, str(source)) if source else read_answers(default_prefix_set())
    off_topic = [a for a in answers if a.first_score <= float(max_first_score)]
    if not off_topic:
        raise UsageError(f"no source answer went off topic (first score <= {max_first_score}): pass logs of steered runs or raise -T max_first_score")
    setup = prepare_on("prefill_detection", common, own, off_topic)
    conditions: list[dict[str, Any]] = [{"condition": "plain", "ablated": []}]
    metadata: dict[str, Any] = {}
    if found is not None:
        check_detectors(found, str(detectors), setup)
        sets = matched_controls(found.latents, control_frequencies(found, setup.api.engine.dictionary), int(n_sets), int(control_seed))
        conditions.append({"condition": "detectors", "ablated": found.latents})
        conditions += [{"condition": "random", "ablated": s, "control_set": j} for j, s in enumerate(sets)]
        metadata = {"detectors": found.latents, "control_sets": sets}
    tokenizer = setup.api.engine.tokenizer
    prefixes = [(a, p) for a in off_topic if (p := prefill_prefix(a, tokenizer, int(prefix_tokens)))]
    chosen = {a.id for a in choose([a for a, _ in prefixes], None if n_prefixes is None else int(n_prefixes), setup.args.seed)}
    setup.notes.append(
        f"{len(off_topic)} off-topic source answers of {len(answers)}; {len(off_topic) - len(prefixes)} had no whole "
        f"sentence within {prefix_tokens} tokens before a restart; {len(chosen)} prefixes used"
    )
    samples = [
        sample
        for a, prefix in prefixes
        if a.id in chosen
        for sample in pair_samples(
            setup, a, conditions, "prefill_detection", prefix=prefix, judged=JUDGED_ANSWER, boost_rule="zero",
            prefix_tokens=token_count(tokenizer, prefix), source_first_score=a.first_score,
        )  # fmt: skip
    ]
    names = [c for c in ("plain", "detectors", "random") if any(x["condition"] == c for x in conditions)]
    comparisons = [(a, b) for a, b in COMPARISONS if a in names and b in names]
    metrics = [paired_metrics(names, comparisons), *grouped_esr_metrics("condition", ["n", "judge_errors"], include_all=False)]
    return esr_task(setup, samples, "prefill_detection", metrics=metrics, headline="restart_rate[plain]", **metadata)
