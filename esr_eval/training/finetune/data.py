"""Self-correction training rows: the model's own answers, some preceded by an off-topic start
and an explicit recovery line.

A row is a chat (`messages`) plus `segments`, the assistant turn cut into pieces that each say
whether they carry loss. Normal row: [answer]. Correction row: [off_topic (no loss), recovery,
answer]. The prompt never carries loss. The number of correction rows is
`floor(n * ratio + 0.5)` (halves round up), placed at random positions.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esr_eval.config import GENERATION, asset_path
from esr_eval.errors import UsageError
from esr_eval.sampling.prompts import DEFAULT_PROMPTS, prompt_texts

ASSETS = asset_path("finetune")
OFFTOPIC_FILE = ASSETS / "offtopic.json"
TRAIN_PROMPTS_FILE = ASSETS / "prompts.txt"
WRITER_PROMPT = (
    "Write three or four sentences of plain prose about {subject}. No title, no list, "
    "no greeting: start with the first sentence."
)


@dataclass(frozen=True)
class OffTopicBank:
    """Subjects (name + facts), passage openers and recovery lines from a JSON data file."""

    subjects: list[dict[str, Any]]
    openers: list[str]
    recovery_lines: list[str]

    @classmethod
    def load(cls, path: str | Path = OFFTOPIC_FILE) -> "OffTopicBank":
        data = json.loads(Path(path).read_text())
        bank = cls(data["subjects"], data["openers"], data["recovery_lines"])
        if not bank.subjects or not bank.openers or not bank.recovery_lines:
            raise ValueError(f"{path} needs non-empty subjects, openers and recovery_lines")
        return bank

    def passage(self, subject: dict[str, Any], rng: random.Random) -> str:
        """An off-topic start: an opener naming the subject and two or three of its facts."""
        facts = rng.sample(subject["facts"], k=min(len(subject["facts"]), rng.choice((2, 3))))
        return " ".join([rng.choice(self.openers).format(subject=subject["name"]), *facts])


def correction_count(n: int, ratio: float) -> int:
    """Self-correction rows among n at the mixing ratio; halves round up (0.5 * 5 -> 3)."""
    return int(math.floor(n * ratio + 0.5))


def eval_prompts() -> set[str]:
    """The evaluation prompt set, lower-cased, to keep out of training data."""
    return {p.lower() for p in prompt_texts(DEFAULT_PROMPTS)}


def training_prompts(path: str | Path | None) -> list[str]:
    """The given prompts, or the packaged training list; evaluation prompts are always dropped."""
    prompts = prompt_texts(path or TRAIN_PROMPTS_FILE)
    held_out = eval_prompts()
    kept = [p for p in prompts if p.lower() not in held_out]
    if not kept:
        raise UsageError("every training prompt is also an evaluation prompt: pass --prompts with other prompts")
    return kept


@dataclass
class RowPlan:
    id: str
    prompt: str
    seed: int
    correction: bool
    subject: dict[str, Any] | None = None
    recovery: str | None = None
    off_topic: str | None = None


def plan_rows(prompts: Sequence[str], n: int, ratio: float, bank: OffTopicBank, seed: int = 0) -> list[RowPlan]:
    """n rows cycling through shuffled prompts; exactly `correction_count(n, ratio)` corrections."""
    if n < 1:
        raise ValueError(f"--n {n}: ask for at least one row")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"--ratio {ratio}: the mixing ratio is a share between 0 and 1")
    rng = random.Random(seed)
    order = list(prompts)
    rng.shuffle(order)
    corrections = set(rng.sample(range(n), correction_count(n, ratio)))
    plans = []
    for i in range(n):
        plan = RowPlan(f"ft-{i:05d}", order[i % len(order)], seed * 1_000_003 + i, i in corrections)
        if plan.correction:
            plan.subject = rng.choice(bank.subjects)
            plan.recovery = rng.choice(bank.recovery_lines)
            plan.off_topic = bank.passage(plan.subject, rng)
        plans.append(plan)
    return plans


def make_row(plan: RowPlan, answer: str) -> dict[str, Any]:
    """The chat row with its segments; "".join(segment texts) is the assistant turn."""
    answer = answer.strip()
    if plan.correction:
        segments: list[dict[str, Any]] = [
            {"part": "off_topic", "text": plan.off_topic, "train": False},
            {"part": "recovery", "text": "\n\n" + str(plan.recovery), "train": True},
            {"part": "answer", "text": "\n\n" + answer, "train": True},
        ]
    else:
        segments = [{"part": "answer", "text": answer, "train": True}]
    return {
        "id": plan.id,
        "kind": "correction" if plan.correction else "normal",
        "subject": plan.subject["name"] if plan.subject else None,
        "seed": plan.seed,
        "messages": [
            {"role": "user", "content": plan.prompt},
            {"role": "assistant", "content": "".join(s["text"] for s in segments)},
        ],
        "segments": segments,
    }


# ------------------------------------------------------------------ tokenisation with masks
def end_of_turn_ids(tokenizer, chat_template: bool = True) -> list[int]:
    """What the chat template writes after an assistant message (e.g. `<|im_end|>\\n`), else EOS."""
    if chat_template and tokenizer.chat_template is not None:
        marker = "\u2063ANSWER\u2063"
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}], tokenize=False
        )
        if marker in text:
            return tokenizer(text.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
    return [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []


def encode_row(tokenizer, row: dict[str, Any], max_length: int = 1024, chat_template: bool = True) -> dict[str, list[int]]:
    """input_ids and labels (-100 on the prompt and on untrained segments), cut to max_length."""
    from esr_eval.steering.engine import render_prompt_ids

    ids = render_prompt_ids(tokenizer, row["messages"][:1], chat_template)
    labels = [-100] * len(ids)
    for segment in row["segments"]:
        piece = tokenizer(segment["text"], add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if segment["train"] else [-100] * len(piece)
    tail = end_of_turn_ids(tokenizer, chat_template)
    ids += tail
    labels += tail
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


# ------------------------------------------------------------------ generation
def generate_answers(engine, plans: Sequence[RowPlan], max_new_tokens: int, batch_size: int, temperature: float) -> list[str]:
    from esr_eval.steering.engine import GenerationRequest

    requests = [GenerationRequest([{"role": "user", "content": p.prompt}], (), max_new_tokens, temperature, seed=p.seed) for p in plans]
    return [r.text for r in engine.generate_in_batches(requests, batch_size)]


def write_passages(writer, plans: Sequence[RowPlan], max_connections: int = 8) -> None:
    """Replace the template passages of correction rows with ones an Inspect model (a name or a
    `Model`) writes."""
    from inspect_ai.model import GenerateConfig, get_model

    model = get_model(writer)
    targets = [p for p in plans if p.correction]

    async def one(plan: RowPlan) -> str:
        config = GenerateConfig(max_tokens=200, temperature=0.9, seed=plan.seed, max_connections=max_connections)
        assert plan.subject is not None, "a correction row has its subject"
        output = await model.generate(WRITER_PROMPT.format(subject=plan.subject["name"]), config=config)
        return output.completion.strip()

    async def all_passages() -> list[str]:
        return await asyncio.gather(*(one(p) for p in targets))

    for plan, text in zip(targets, asyncio.run(all_passages())):
        if text:  # an empty reply keeps the template passage
            plan.off_topic = text


def make_datasets(
    engine,
    prompts: Sequence[str],
    n: int,
    ratios: Sequence[float],
    bank: OffTopicBank | None = None,
    seed: int = 0,
    max_new_tokens: int = 200,
    batch_size: int = 16,
    temperature: float = GENERATION.temperature,
    writer: str | None = None,
) -> dict[float, list[dict[str, Any]]]:
    """Rows for each mixing ratio. Row i has the same prompt and seed at every ratio, so the
    model's answers are generated once and shared; only which rows self-correct differs."""
    bank = bank or OffTopicBank.load()
    plans = {ratio: plan_rows(prompts, n, ratio, bank, seed) for ratio in ratios}
    first = plans[ratios[0]]
    assert all([(p.prompt, p.seed) for p in ps] == [(p.prompt, p.seed) for p in first] for ps in plans.values())
    if writer:
        for ps in plans.values():
            write_passages(writer, ps)
    answers = generate_answers(engine, first, max_new_tokens, batch_size, temperature)
    return {ratio: [make_row(p, a) for p, a in zip(ps, answers)] for ratio, ps in plans.items()}



def ratio_path(out: str | Path, ratio: float, several: bool) -> Path:
    """`data.jsonl` for one ratio; `data-r50.jsonl` (percent) for each of several."""
    out = Path(out)
    return out.with_name(f"{out.stem}-r{round(ratio * 100):02d}.jsonl") if several else out
