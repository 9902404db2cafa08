"""Steered answers to continue, and the prefixes cut from them, for the two continuation
controls: `prefill_detection` (an off-topic start, no restart in it, continued unsteered) and
`matched_prefix` (the text up to just after a restart, or the same on-topic tokens without the
restart, continued under the push).

Sources: eval logs of steered runs (read with `esr_eval.results.logs`), a prefix set written by
`esr-eval build-prefixes` (jsonl of `schema.SourceAnswer`; one ships per embedded model), or the
judge-validation set's written restarting answers. Restarts are found twice: where the source's
judge put a second attempt, and any later sentence the restart classifier flags (at the offline
grader's candidate threshold), so a prefix holds no restart that either would see.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from esr_eval.config import asset_path
from esr_eval.errors import DataFileError, UsageError
from esr_eval.files import atomic_write_jsonl, read_jsonl
from esr_eval.schema import SourceAnswer

ASSETS = asset_path("prefill")
VALIDATION_SET = asset_path("judge_validation", "set.jsonl")
SENTENCE_END = ".!?\u2026"


def shipped_prefix_set(model: str) -> Path:
    """The prefix set shipped for a model (`esr_eval/assets/prefill/<model>.jsonl`)."""
    return ASSETS / f"{model}.jsonl"


# ------------------------------------------------------------------ restarts in an answer


def flagged_restarts(answer: str) -> list[tuple[int, int]]:
    """(start, end) of every sentence or clause after the first that the restart classifier reads
    as a restart (at the offline grader's candidate threshold; the first sentence starts the
    answer, it restarts nothing)."""
    from esr_eval.embedding import embed
    from esr_eval.judge.offline import RESTART_P
    from esr_eval.judge.restarts import restart_classifier, split_units

    units = split_units(answer)[1:]
    if not units:
        return []
    p = restart_classifier().probability(embed([u.text for u in units]))
    return [(u.start, u.end) for u, q in zip(units, p) if q >= RESTART_P]


def restart_span(answer: str, start: int, flagged: list[tuple[int, int]]) -> int:
    """End of the restart's words that begin at `start`: its first sentence, and the flagged
    sentences that follow it without a gap ("Wait, that's wrong. Let me try again.")."""
    from esr_eval.judge.restarts import split_units

    units = [u for u in split_units(answer) if u.end > start]
    if not units:
        return len(answer)
    end = units[0].end
    flagged_starts = {s for s, _ in flagged}
    for unit in units[1:]:
        if unit.start not in flagged_starts:
            break
        end = unit.end
    return end


def locate_restart(answer: str, attempts: list[dict[str, Any]], flagged: list[tuple[int, int]]) -> tuple[int | None, int | None]:
    """(start, end) of the first restart: the judge's second attempt, else the first flagged
    sentence; (None, None) when neither finds one."""
    from esr_eval.analysis.boundaries import attempt_starts

    starts = attempt_starts(answer, attempts) if len(attempts) >= 2 else []
    start = next((s for s in starts[1:] if s is not None), None)
    if start is None and flagged:
        start = flagged[0][0]
    return (None, None) if start is None else (start, restart_span(answer, start, flagged))


def clean_end(answer: str, restart_start: int | None, flagged: list[tuple[int, int]]) -> int:
    """Where the restart-free start of the answer ends."""
    return min([len(answer), *([restart_start] if restart_start is not None else []), *(s for s, _ in flagged)])


# ------------------------------------------------------------------ sources


def answers_from_logs(paths: Iterable[str | Path]) -> list[SourceAnswer]:
    """Every judged steered answer (boost above 0, not itself a continuation) in the logs."""
    from esr_eval.results.logs import (
        primary_scorer,
        read_logs,
        sample_trial,
        short_task,
    )

    found = []
    for log in read_logs(paths):
        scorer = primary_scorer(log)
        for sample in log.samples or []:
            md = sample.metadata or {}
            trial = sample_trial(sample, scorer) if scorer else None
            if trial is None or not trial.value.attempted or md.get("prefix") or not float(md.get("boost") or 0) > 0:
                continue
            answer = sample.output.completion if sample.output else ""
            assert scorer is not None and sample.scores is not None  # a trial was read from them
            attempts = (sample.scores[scorer].metadata or {}).get("attempts") or []
            flagged = flagged_restarts(answer)
            start, end = locate_restart(answer, attempts, flagged)
            found.append(
                SourceAnswer(
                    id=f"{Path(str(log.location)).stem[-8:]}-{sample.id}-e{sample.epoch}",
                    model=log.eval.model,
                    prompt=str(md.get("prompt", sample.input if isinstance(sample.input, str) else "")),
                    label=str(md.get("label", "")),
                    answer=answer,
                    first_score=trial.value.first_score,
                    clean_end=clean_end(answer, start, flagged),
                    latent=None if md.get("latent") is None else int(md["latent"]),
                    boost=float(md["boost"]),
                    prompt_id=md.get("prompt_id"),
                    restart_start=start,
                    restart_end=end,
                    origin={"log": Path(str(log.location)).name, "task": short_task(log.eval.task), "sample_id": sample.id,
                            "epoch": sample.epoch, "seed": md.get("generation_seed", md.get("seed"))},
                )
            )
    return found


def read_answers(path: str | Path) -> list[SourceAnswer]:
    fix = "write one with `esr-eval build-prefixes LOG... --out FILE`"
    rows = read_jsonl(path, "prefix set", fix)
    try:
        return [SourceAnswer.from_dict(r) for r in rows]
    except TypeError as err:
        raise DataFileError(path, None, f"is not a prefix set ({err})", fix) from None


def write_answers(path: str | Path, answers: Iterable[SourceAnswer]) -> Path:
    return atomic_write_jsonl(path, (a.to_dict() for a in answers))


def read_source(source: str | Path) -> list[SourceAnswer]:
    """A prefix set (.jsonl) or eval logs (a log file or a folder of them)."""
    path = Path(source).expanduser()
    if path.suffix == ".jsonl":
        return read_answers(path)
    return answers_from_logs([path])


def validation_restarts(path: str | Path = VALIDATION_SET) -> list[SourceAnswer]:
    """The judge-validation set's answers with a labelled restart that something follows (written
    answers: the embedded models hardly ever restart), with the restart's labelled offsets."""
    out = []
    for row in read_jsonl(path, "judge-validation set"):
        attempts = row.get("attempts") or []
        if len(attempts) < 2 or row.get("dangling_restarts"):
            continue
        second = attempts[1]
        out.append(
            SourceAnswer(
                id=row["id"], model=None, prompt=row["prompt"], label=row["label"], answer=row["answer"],
                first_score=math.nan, clean_end=int(second["start"]),
                prompt_id=(row.get("origin") or {}).get("prompt_id"), restart_start=int(second["start"]),
                restart_end=int(second["restart_end"]), origin={"set": Path(path).name, "category": row.get("category")},
            )
        )  # fmt: skip
    return out


def same_model(source_model: str | None, model: str) -> bool:
    """Whether a source answer's model (`steered/...` as logged) is the evaluated one."""
    from esr_eval.results.logs import short_model

    return source_model is None or short_model(source_model) == short_model(f"steered/{model}")


def check_models(answers: list[SourceAnswer], model: str, what: str) -> None:
    other = sorted({a.model for a in answers if a.model is not None and not same_model(a.model, model)})
    if other:
        raise UsageError(
            f"{what} holds answers of {other[0]}, not of {model}: prefixes must be the model's own words "
            "(pass logs of this model's steering_resistance runs)"
        )


# ------------------------------------------------------------------ cutting prefixes


def token_count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def sentence_ends(answer: str, limit: int) -> list[int]:
    """Character offsets at or before `limit` where a sentence (or a line) of the answer ends."""
    from esr_eval.judge.restarts import split_units

    ends = []
    for unit in split_units(answer):
        end = unit.end
        if end > limit:
            break
        if answer[end - 1] in SENTENCE_END or answer[end : end + 1] == "\n" or end == len(answer):
            ends.append(end)
    return ends


def prefill_prefix(answer: SourceAnswer, tokenizer: Any, budget: int) -> str | None:
    """The longest run of whole sentences before any restart within `budget` tokens; None when
    not even the first sentence fits."""
    best = None
    for end in sentence_ends(answer.answer, answer.clean_end):
        text = answer.answer[:end].rstrip()
        if token_count(tokenizer, text) > budget:
            break
        best = text
    return best


def first_tokens(text: str, tokenizer: Any, k: int) -> str:
    """The start of `text` that holds its first `k` tokens."""
    from esr_eval.analysis.boundaries import token_offsets

    offsets = token_offsets(tokenizer, text)
    return text if len(offsets) <= k else text[: offsets[k - 1][1]]


def restart_prefixes(answer: SourceAnswer, tokenizer: Any, k: int) -> tuple[str, str] | None:
    """(restart prefix, matched prefix): the answer up to just after its restart plus the next
    `k` tokens, and the same without the restart's words (what came before it, then the same
    `k` on-topic tokens). None when nothing follows the restart."""
    if answer.restart_start is None or answer.restart_end is None:
        return None
    after = answer.answer[answer.restart_end :]
    on_topic = first_tokens(after, tokenizer, k).rstrip()
    if not on_topic.strip():
        return None
    before = answer.answer[: answer.restart_start].rstrip()
    joined = on_topic if on_topic[:1].isspace() or not before else " " + on_topic
    return answer.answer[: answer.restart_end] + on_topic, before + joined
