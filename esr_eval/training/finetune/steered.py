"""Steering-aware self-correction rows: the model's own drift under steering, a recovery line and a
good answer, each row carrying the steering it was generated with (applied again in the training
forward pass, over the whole row).

Three kinds of rows, so that restarts come from being pushed off topic and not at random:
- correction: steered at a derailing boost; the model's own first tokens (no loss), a recovery
  line, then the model's own unsteered answer (loss on both, with the steering still on);
- steered: steered below the derailing boost; the model's own (still on-topic) answer, no restart;
- normal: unsteered; the model's own answer, no restart.
A drift counts as derailed, and a mildly steered answer as on topic, by the grader's first-attempt
score. Recovery lines are drawn from a grammar of a few thousand phrasings.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from esr_eval.config import GENERATION, SteeredDataSettings, asset_path
from esr_eval.steering.engine import GenerationRequest, SteeringEngine
from esr_eval.steering.intervention import Intervention
from esr_eval.steering.scale import median_residual_norm, steering_scale

RECOVERY_FILE = asset_path("finetune", "recovery.json")
Kind = Literal["correction", "steered", "normal"]
OVERSAMPLE = 1.5  # plans per wanted row of a steered kind: some drifts stay on topic, some mild pushes derail


@dataclass(frozen=True)
class RecoveryGrammar:
    """An optional interjection, a sentence noticing the drift, a sentence returning to the question."""

    interjections: list[str]
    noticing: list[str]
    returning: list[str]

    @classmethod
    def load(cls, path: str | Path = RECOVERY_FILE) -> "RecoveryGrammar":
        data = json.loads(Path(path).read_text())
        return cls(data["interjections"], data["noticing"], data["returning"])

    @staticmethod
    def join(interjection: str, noticing: str, returning: str) -> str:
        lead = interjection.strip()
        if not lead or lead.endswith("."):
            noticing = noticing[:1].upper() + noticing[1:]
        return " ".join(part for part in (lead, noticing, returning) if part)

    def sample(self, rng: random.Random) -> str:
        return self.join(rng.choice(self.interjections), rng.choice(self.noticing), rng.choice(self.returning))

    def all(self) -> list[str]:
        return [self.join(i, n, r) for i in self.interjections for n in self.noticing for r in self.returning]


@dataclass
class SteeredPlan:
    id: str
    prompt: str
    kind: Kind
    latent: int | None
    boost: float
    seed: int
    drift_tokens: int = 0
    recovery: str | None = None

    @property
    def interventions(self) -> list[Intervention]:
        return [Intervention(self.latent, self.boost)] if self.latent is not None and self.boost else []


def plan_steered_rows(
    prompts: Sequence[str], latents: Sequence[int], scales: dict[int, float], settings: SteeredDataSettings
) -> list[SteeredPlan]:
    """More plans than rows for the steered kinds (see OVERSAMPLE); `select_rows` keeps `settings.n`."""
    rng = random.Random(settings.seed)
    grammar = RecoveryGrammar.load()
    wanted: dict[Kind, int] = {
        "correction": round(settings.n * settings.correction_share),
        "steered": round(settings.n * settings.steered_share),
    }
    wanted["normal"] = settings.n - wanted["correction"] - wanted["steered"]
    plans: list[SteeredPlan] = []
    for kind, count in wanted.items():
        total = count if kind == "normal" else int(count * OVERSAMPLE + 0.999)
        for _ in range(total):
            i = len(plans)
            prompt = prompts[rng.randrange(len(prompts))]
            if kind == "normal":
                plans.append(SteeredPlan(f"st-{i:05d}", prompt, "normal", None, 0.0, settings.seed * 1_000_003 + i))
                continue
            latent = latents[rng.randrange(len(latents))]
            low, high = settings.derail_scale if kind == "correction" else settings.mild_scale
            boost = round(rng.uniform(low, high) * scales[latent], 3)
            plan = SteeredPlan(f"st-{i:05d}", prompt, kind, latent, boost, settings.seed * 1_000_003 + i)
            if kind == "correction":
                plan.drift_tokens = rng.randint(*settings.drift_tokens)
                plan.recovery = grammar.sample(rng)
            plans.append(plan)
    return plans


def steering_scales(engine: SteeringEngine, prompts: Sequence[str], latents: Sequence[int]) -> dict[int, float]:
    norm = median_residual_norm(engine, prompts)
    return {k: steering_scale(norm, engine.primary_dictionary(), k) for k in latents}


@dataclass
class Generated:
    plan: SteeredPlan
    text: str  # the drift (correction) or the whole answer (steered, normal)
    answer: str  # the model's own unsteered answer to the prompt
    first_score: float | None = None  # the grader's first-attempt score of `text` (0-1)
    n_attempts: int | None = None


def _trim_to_word(text: str) -> str:
    """A drift cut at a token budget ends mid-word; keep whole words."""
    text = text.rstrip()
    cut = max(text.rfind(" "), text.rfind("\n"))
    return text[:cut].rstrip() if cut > len(text) // 2 else text


def generate(engine: SteeringEngine, plans: Sequence[SteeredPlan], settings: SteeredDataSettings, batch_size: int = 16) -> list[Generated]:
    """Each plan's steered text (and the unsteered answer every row needs), in batches."""
    temperature = GENERATION.temperature
    answered = [p for p in plans if p.kind != "steered"]  # a steered row's answer is its steered text
    answers = engine.generate_in_batches(
        [GenerationRequest([{"role": "user", "content": p.prompt}], (), settings.answer_tokens, temperature, seed=p.seed) for p in answered],
        batch_size,
        desc="unsteered answers",
    )
    answer_of = {p.id: r.text.strip() for p, r in zip(answered, answers)}
    steered_plans = [p for p in plans if p.kind != "normal"]
    steered = engine.generate_in_batches(
        [
            GenerationRequest(
                [{"role": "user", "content": p.prompt}],
                p.interventions,
                p.drift_tokens if p.kind == "correction" else settings.answer_tokens,
                temperature,
                seed=p.seed + 1,
            )
            for p in steered_plans
        ],
        batch_size,
        desc="steered answers",
    )
    texts = {p.id: (_trim_to_word(r.text) if p.kind == "correction" else r.text.strip()) for p, r in zip(steered_plans, steered)}
    return [Generated(p, texts.get(p.id, answer_of.get(p.id, "")), answer_of.get(p.id, "")) for p in plans]


async def _grade(grader, items: Sequence[Generated], labels: dict[int, str]) -> None:
    from esr_eval.judge.protocol import judge_answer

    async def one(g: Generated) -> None:
        label = labels.get(g.plan.latent, "") if g.plan.latent is not None else "nothing"
        judged = await judge_answer(grader, g.plan.prompt, g.text, label)
        g.n_attempts = None if judged.error else len(judged.attempts)
        g.first_score = None if judged.error or not judged.attempts else judged.attempts[0].score / 100.0

    await asyncio.gather(*(one(g) for g in items))


def grade(grader: str | Any, items: Sequence[Generated], labels: dict[int, str]) -> None:
    """The grader's first-attempt score of every steered text (an Inspect model or its name)."""
    from inspect_ai.model import get_model

    model = get_model(grader) if isinstance(grader, str) else grader
    asyncio.run(_grade(model, [g for g in items if g.plan.kind != "normal"], labels))


def keeps(g: Generated, settings: SteeredDataSettings) -> bool:
    """A correction row needs a derailed drift; a steered row an on-topic, single-attempt answer."""
    if g.plan.kind == "normal":
        return bool(g.answer)
    if g.first_score is None:
        return False
    if g.plan.kind == "correction":
        return g.first_score < settings.derailed_below and bool(g.answer) and bool(g.text)
    return g.first_score >= settings.on_topic_above and g.n_attempts == 1


@dataclass
class Selection:
    rows: list[dict[str, Any]]
    generated: dict[str, int] = field(default_factory=dict)
    kept: dict[str, int] = field(default_factory=dict)


def make_row(g: Generated, dictionary_id: str | None, layer: int) -> dict[str, Any]:
    """The chat row: segments (what carries loss) and the steering it was generated with."""
    p = g.plan
    if p.kind == "correction":
        joiner = " " if g.text.endswith((".", "!", "?")) else "... "
        segments: list[dict[str, Any]] = [
            {"part": "off_topic", "text": g.text, "train": False},
            {"part": "recovery", "text": joiner + str(p.recovery), "train": True},
            {"part": "answer", "text": "\n\n" + g.answer, "train": True},
        ]
    else:
        segments = [{"part": "answer", "text": g.text if p.kind == "steered" else g.answer, "train": True}]
    return {
        "id": p.id,
        "kind": p.kind,
        "seed": p.seed,
        "latent": p.latent,
        "boost": p.boost,
        "drift_score": g.first_score,
        "steering": {"dictionary": dictionary_id, "layer": layer, "interventions": [iv.to_dict() for iv in p.interventions]},
        "messages": [
            {"role": "user", "content": p.prompt},
            {"role": "assistant", "content": "".join(s["text"] for s in segments)},
        ],
        "segments": segments,
    }


def select_rows(generated: Sequence[Generated], settings: SteeredDataSettings, dictionary_id: str | None, layer: int) -> Selection:
    """The first rows of each kind that pass `keeps`, up to the wanted count, in plan order."""
    wanted = {
        "correction": round(settings.n * settings.correction_share),
        "steered": round(settings.n * settings.steered_share),
    }
    wanted["normal"] = settings.n - wanted["correction"] - wanted["steered"]
    out = Selection([], {k: 0 for k in wanted}, {k: 0 for k in wanted})
    for g in generated:
        out.generated[g.plan.kind] += 1
        if out.kept[g.plan.kind] < wanted[g.plan.kind] and keeps(g, settings):
            out.kept[g.plan.kind] += 1
            out.rows.append(make_row(g, dictionary_id, layer))
    random.Random(settings.seed).shuffle(out.rows)
    return out


def row_interventions(row: dict[str, Any]) -> list[Intervention]:
    return [Intervention.from_dict(d) for d in (row.get("steering") or {}).get("interventions", [])]


def make_steered_rows(
    engine: SteeringEngine,
    prompts: Sequence[str],
    latents: Sequence[int],
    settings: SteeredDataSettings,
    grader: str | Any,
    batch_size: int = 16,
) -> Selection:
    """Plan, generate, grade and select the rows (see the module docstring)."""
    if engine.dictionary is None:
        raise ValueError("steered rows need a dictionary: use a preset or --dictionary")
    scales = steering_scales(engine, prompts, latents)
    plans = plan_steered_rows(prompts, latents, scales, settings)
    generated = generate(engine, plans, settings, batch_size)
    grade(grader, generated, {k: engine.dictionary.label(k) or f"latent {k}" for k in latents})
    return select_rows(generated, settings, engine.dictionary_id, engine.layer)
