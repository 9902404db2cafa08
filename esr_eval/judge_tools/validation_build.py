"""Build the judge-validation set from its sources (`python -m esr_eval.judge_tools.validation_build`).

Sources, in `esr_eval/assets/judge_validation/sources/`:
- `written_dev.txt`, `written_test.txt`: hand-written answers with their labels in a header line
  and their restart phrases marked inline (format in the set's README);
- `real_answers.jsonl`: steered answers of the embedded models taken from eval logs
  (`python -m esr_eval.judge_tools.validation_build harvest LOG...`);
- `real_labels.jsonl`: the hand labels of those answers, keyed by id.

Real answers are split by latent (all answers of one latent of one model land in one half), so
no concept is seen on both sides; the written halves come from separate files whose phrasings
are disjoint.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from esr_eval.judge_tools.validation_set import (
    SET_DIR,
    SET_PATH,
    LabelledAttempt,
    ValidationRow,
)

SOURCES = SET_DIR / "sources"
WRITTEN = {"dev": SOURCES / "written_dev.txt", "test": SOURCES / "written_test.txt"}
REAL_ANSWERS = SOURCES / "real_answers.jsonl"
REAL_LABELS = SOURCES / "real_labels.jsonl"

# [[restart that opens an attempt]] <<restart with nothing after it>> {{trap}} ((degenerate))
MARKERS = {"[[": ("]]", "restart"), "<<": (">>", "dangling"), "{{": ("}}", "trap"), "((": ("))", "degenerate")}
_MARKER = re.compile(r"\[\[|<<|\{\{|\(\(")


def strip_markers(marked: str) -> tuple[str, dict[str, list[tuple[int, int]]]]:
    """The plain text and, per marker kind, the (start, end) spans of the marked phrases."""
    out: list[str] = []
    spans: dict[str, list[tuple[int, int]]] = {kind: [] for _, kind in MARKERS.values()}
    pos, length = 0, 0
    while True:
        match = _MARKER.search(marked, pos)
        if match is None:
            out.append(marked[pos:])
            break
        closer, kind = MARKERS[match.group()]
        end = marked.find(closer, match.end())
        if end < 0:
            raise ValueError(f"unclosed {match.group()} in {marked[match.start():match.start() + 60]!r}")
        before, inner = marked[pos : match.start()], marked[match.end() : end]
        out += [before, inner]
        length += len(before)
        spans[kind].append((length, length + len(inner)))
        length += len(inner)
        pos = end + len(closer)
    return "".join(out), spans


def attempts_from_boundaries(
    answer: str, restarts: list[tuple[int, int]], bands: list[int], serves: list[bool]
) -> tuple[LabelledAttempt, ...]:
    """Attempt i + 1 starts at restart i; each attempt ends where the next starts (trailing space cut)."""
    if len(bands) != len(restarts) + 1 or len(serves) != len(bands):
        raise ValueError(f"{len(bands)} bands and {len(serves)} concept flags for {len(restarts) + 1} attempts")
    starts = [(0, 0), *restarts]
    attempts = []
    for i, (start, restart_end) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(answer)
        while end > restart_end and answer[end - 1].isspace():
            end -= 1
        attempts.append(LabelledAttempt(start, end, restart_end, serves[i], bands[i]))
    return tuple(attempts)


def _flags(text: str) -> list[bool]:
    return [] if text.strip() in ("-", "") else [bool(int(x)) for x in text.split(",")]


def _bands(text: str) -> list[int]:
    return [] if text.strip() in ("-", "") else [int(x) for x in text.split(",")]


def _improves(text: str) -> bool | None:
    return {"y": True, "n": False, "-": None}[text.strip()]


def prompt_texts_by_id() -> dict[str, str]:
    from esr_eval.sampling.prompts import load_prompts

    return {p.id: p.text for p in load_prompts(None)}


def parse_written(path: Path, split: str, prompts: dict[str, str]) -> list[ValidationRow]:
    rows = []
    blocks = re.split(r"^### ", path.read_text(), flags=re.MULTILINE)[1:]
    for block in blocks:
        header, _, body = block.partition("\n")
        body = "\n".join(line for line in body.splitlines() if not line.startswith("#")).strip()
        fields = [f.strip() for f in header.split("|")]
        if len(fields) != 7:
            raise ValueError(f"{path}: header {header!r} needs 7 fields")
        row_id, prompt, label, category, bands, serves, improves = fields
        answer, spans = strip_markers(body)
        bands_, serves_ = _bands(bands), _flags(serves)
        attempts = () if not bands_ else attempts_from_boundaries(answer, spans["restart"], bands_, serves_)

        def phrases(kind: str) -> tuple[str, ...]:
            return tuple(answer[a:b] for a, b in spans[kind])

        rows.append(
            ValidationRow(
                id=row_id, split=split, category=category, prompt=prompts.get(prompt, prompt), label=label, answer=answer,
                attempts=attempts, improves=_improves(improves),
                origin={"kind": "written", "source": path.name, "prompt_id": prompt if prompt in prompts else None},
                restart_phrases=phrases("restart"), dangling_restarts=phrases("dangling"),
                trap_phrases=phrases("trap"), degenerate_phrases=phrases("degenerate"),
            )  # fmt: skip
        )
    return rows


def _locate(answer: str, phrases: list[str], row_id: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for phrase in phrases:
        start = answer.find(phrase, pos)
        if start < 0:
            raise ValueError(f"{row_id}: restart phrase {phrase!r} is not in the answer (after offset {pos})")
        spans.append((start, start + len(phrase)))
        pos = start + len(phrase)
    return spans


def real_rows(answers: list[dict[str, Any]], labels: dict[str, dict[str, Any]]) -> list[ValidationRow]:
    """Labelled real answers (answers without a label are left out), split by latent."""
    rows = []
    for item in answers:
        lab = labels.get(item["id"])
        if lab is None:
            continue
        answer = item["answer"]
        bands = [int(b) for b in lab["bands"]]
        restarts = _locate(answer, list(lab.get("restarts", [])), item["id"])
        attempts = () if not bands else attempts_from_boundaries(answer, restarts, bands, [bool(s) for s in lab["serves"]])
        rows.append(
            ValidationRow(
                id=item["id"], split="", category=lab["category"], prompt=item["prompt"], label=item["label"], answer=answer,
                attempts=attempts, improves=lab.get("improves"), origin=item["origin"],
                restart_phrases=tuple(lab.get("restarts", [])), dangling_restarts=tuple(lab.get("dangling", [])),
                trap_phrases=tuple(lab.get("traps", [])), degenerate_phrases=tuple(lab.get("degenerate", [])),
                notes=lab.get("notes", ""),
            )  # fmt: skip
        )
    return assign_splits(rows)


def assign_splits(rows: list[ValidationRow]) -> list[ValidationRow]:
    """Whole latents to a half, model by model (so answers added for one model leave the other's
    halves as they were): the largest groups first, each to the half with fewer rows."""
    from dataclasses import replace

    groups: dict[tuple[str, Any], list[ValidationRow]] = {}
    for row in rows:
        groups.setdefault((row.origin.get("model", ""), row.origin.get("latent")), []).append(row)
    split_of: dict[tuple[str, Any], str] = {}
    for model in sorted({model for model, _ in groups}):
        sizes = {"dev": 0, "test": 0}
        for key in sorted((k for k in groups if k[0] == model), key=lambda k: (-len(groups[k]), str(k))):
            half = min(sizes, key=lambda s: (sizes[s], s))
            split_of[key] = half
            sizes[half] += len(groups[key])
    return [replace(row, split=split_of[(row.origin.get("model", ""), row.origin.get("latent"))]) for row in rows]


def build() -> list[ValidationRow]:
    from esr_eval.files import read_jsonl

    prompts = prompt_texts_by_id()
    written = [row for split, path in WRITTEN.items() for row in parse_written(path, split, prompts)]
    answers = read_jsonl(REAL_ANSWERS) if REAL_ANSWERS.exists() else []
    labels = {row["id"]: row for row in read_jsonl(REAL_LABELS)} if REAL_LABELS.exists() else {}
    unknown = sorted(set(labels) - {a["id"] for a in answers})
    if unknown:
        raise ValueError(f"labels for answers that are not in {REAL_ANSWERS.name}: {unknown[:5]}")
    rows = real_rows(answers, labels) + written
    ids = Counter(row.id for row in rows)
    duplicated = [i for i, n in ids.items() if n > 1]
    if duplicated:
        raise ValueError(f"duplicate row ids: {duplicated[:5]}")
    for row in rows:
        problems = row.problems()
        if problems:
            raise ValueError(f"{row.id}: {'; '.join(problems)}")
    return rows


# ------------------------------------------------------------------ harvesting logs


def harvest(logs: list[str]) -> list[dict[str, Any]]:
    """The steered answers of eval logs as unlabelled rows (id, origin, prompt, label, answer)."""
    from inspect_ai.log import read_eval_log

    items = []
    for path in logs:
        log = read_eval_log(path, resolve_attachments=True)
        model = log.eval.model
        short = {"steered/smollm2-135m": "smol", "steered/gemma-3-270m": "gemma"}.get(model, model.replace("/", "-"))
        task = log.eval.task.split("/")[-1]
        args = log.eval.task_args or {}
        for sample in log.samples or []:
            md = sample.metadata or {}
            score = next(iter((sample.scores or {}).values()), None)
            answer = (sample.output.completion if sample.output else "").strip()
            items.append(
                {
                    "id": f"{short}-{task}-s{args.get('seed', 0)}-{sample.id}",
                    "origin": {
                        "kind": "real", "model": model, "task": task, "log": Path(path).name, "sample_id": sample.id,
                        "latent": md.get("latent"), "boost": md.get("boost"), "threshold": md.get("threshold"),
                        "level": md.get("level"), "seed": md.get("generation_seed"), "prompt_id": md.get("prompt_id"),
                        "task_args": {k: args[k] for k in ("seed", "n_latents", "prompts_per_latent", "max_tokens",
                                                            "levels", "span", "target") if k in args},
                        "calibration_grader": (score.metadata or {}).get("grader") if score else None,
                    },
                    "prompt": md.get("prompt", sample.input if isinstance(sample.input, str) else ""),
                    "label": md.get("label", ""),
                    "answer": answer,
                }  # fmt: skip
            )
    return items


def add_answers(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append the harvested rows whose ids the answers file does not hold yet (written atomically)."""
    from esr_eval.files import atomic_write_jsonl, read_jsonl

    old = read_jsonl(path) if path.exists() else []
    known = {row["id"] for row in old}
    new = [row for row in rows if row["id"] not in known]
    atomic_write_jsonl(path, old + new)
    print(f"{len(new)} answers added to {path} ({len(old) + len(new)} in all)")


def main(argv: list[str] | None = None) -> int:
    from esr_eval.files import atomic_write_jsonl

    parser = argparse.ArgumentParser(prog="python -m esr_eval.judge_tools.validation_build", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    h = sub.add_parser("harvest", help="append the answers of eval logs to real_answers.jsonl")
    h.add_argument("logs", nargs="+")
    sub.add_parser("build", help="write set.jsonl from the sources (the default)")
    args = parser.parse_args(argv)
    if args.command == "harvest":
        add_answers(REAL_ANSWERS, harvest(args.logs))
        return 0
    rows = build()
    atomic_write_jsonl(SET_PATH, [row.to_dict() for row in rows])
    counts = Counter((row.split, "written" if row.written else row.origin.get("model", "?")) for row in rows)
    print(f"{len(rows)} rows -> {SET_PATH}")
    for (split, origin), n in sorted(counts.items()):
        print(f"  {split:5} {origin:24} {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
