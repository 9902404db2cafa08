"""The typed records that cross module borders: the sample metadata the dataset writes (and the
solver, scorer, results and analyses read), the trial value the scorer writes (and every reader
of logs reads back), the detectors file, and what fine-tuning records about a model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

if TYPE_CHECKING:
    from esr_eval.steering.intervention import Intervention

# ------------------------------------------------------------------ one sample

SOLVER_FIELDS = ("threshold", "calibration_trials", "calibration_score", "calibration_judge_errors", "boost", "generation_seed")
ALWAYS_WRITTEN = ("latent", "label", "prompt", "prompt_id")  # every steered sample has them, None or not


@dataclass
class SampleMetadata:
    """A steered sample's `Sample.metadata`: written by the dataset (`tasks/dataset.py`, the
    continuation controls), completed by the solver (threshold, boost, generation seed) and read
    by the scorer, metrics, results and episodes. `to_metadata` writes the same keys the logs have
    always held (a field left None is not written, but `ALWAYS_WRITTEN` always are);
    keys it does not know stay in `extra`, so nothing read from a log is lost."""

    latent: int | None = None
    label: str | None = None  # the steered concept the judge checks each attempt against
    prompt: str | None = None  # the plain prompt the judge sees (without any meta-prompt)
    prompt_id: str | None = None
    pair: Any = None  # continuation controls: the source answer every condition of a pair shares
    seed: int | None = None
    mode: str | None = None  # the steered latent's intervention mode ("add")
    boost_rule: str | None = None  # "threshold", "sweep" (with `level`), "zero" or "given" (`boost`)
    level: float | None = None  # boost_sweep: standard deviations from the mean threshold
    ablated: list[int] | None = None  # latents clamped to 0 beside the steering
    prefix: str | None = None  # the start of the answer, in the model's own turn
    judged: str | None = None  # with a prefix: "answer" (prefix + continuation) or "continuation"
    condition: str | None = None  # continuation controls: the condition of the pair
    # set by the solver
    threshold: float | None = None
    calibration_trials: int | None = None
    calibration_score: float | None = None
    calibration_judge_errors: int | None = None
    boost: float | None = None
    generation_seed: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # variant, control_set, source, ...

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> "SampleMetadata":
        known = {f.name for f in fields(cls)} - {"extra"}
        data = dict(metadata or {})
        return cls(**{k: data.pop(k) for k in list(data) if k in known}, extra=data)

    def to_metadata(self) -> dict[str, Any]:
        out = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "extra" and (f.name in ALWAYS_WRITTEN or getattr(self, f.name) is not None)
        }
        return {**out, **self.extra}

    def solved(self) -> dict[str, Any]:
        """The keys the solver sets (those it has set), in the order it writes them."""
        return {k: getattr(self, k) for k in SOLVER_FIELDS if getattr(self, k) is not None}

    def interventions(self) -> list["Intervention"]:
        """The steering a sample is generated with: its latent at its boost (none at boost 0 or
        before the solver set it), and each ablated latent clamped to 0."""
        from esr_eval.steering.intervention import Intervention

        out = []
        if self.latent is not None and self.boost:
            out.append(Intervention(int(self.latent), float(self.boost), self.mode or "add"))  # type: ignore[arg-type]
        return out + [Intervention(int(k), 0.0, "clamp") for k in self.ablated or []]


# ------------------------------------------------------------------ one trial


@dataclass(frozen=True)
class TrialValue:
    """The numbers of one judged trial, stored as `Score.value` (a dict of floats, so Inspect's
    epoch reducer can average them). Flags are 1.0 / 0.0 for one trial; a sample reduced over
    epochs holds the share of its epochs instead."""

    n_attempts: float = 0.0
    first_score: float = 0.0  # 0-100
    last_score: float = 0.0
    multi_attempt: float = 0.0  # 2+ attempts
    esr: float = 0.0  # 2+ attempts, last > first, and the last attempt not degenerate
    improvement: float = 0.0  # last - first on multi-attempt trials, else 0
    degraded: float = 0.0  # degenerate answer: 5+ identical consecutive words, fused non-words, loops
    judge_error: float = 0.0  # the grader's reply stayed unreadable
    judge_fault: float = 0.0  # a readable reply that contradicts the answer (see the judge)
    first_serves_concept: float = 0.0
    last_serves_concept: float = 0.0

    @classmethod
    def from_scores(
        cls,
        scores: list[float],
        serves_concept: list[bool],
        degraded: bool,
        judge_fault: bool = False,
        last_degenerate: bool = False,
    ) -> "TrialValue":
        """A judged trial from its attempts' scores (in order) and concept flags. A restart that
        leads only into degenerate text (`last_degenerate`) is a second attempt but not ESR."""
        first = float(scores[0]) if scores else 0.0
        last = float(scores[-1]) if scores else 0.0
        multi = len(scores) >= 2
        return cls(
            n_attempts=float(len(scores)),
            first_score=first,
            last_score=last,
            multi_attempt=float(multi),
            esr=float(multi and last > first and not last_degenerate),
            improvement=last - first if multi else 0.0,
            degraded=float(degraded),
            judge_fault=float(judge_fault),
            first_serves_concept=float(bool(serves_concept) and serves_concept[0]),
            last_serves_concept=float(bool(serves_concept) and serves_concept[-1]),
        )

    @classmethod
    def failed(cls, degraded: bool) -> "TrialValue":
        """A trial whose judge never gave a readable reply: counted, left out of the rates."""
        return cls(degraded=float(degraded), judge_error=1.0)

    def to_value(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def is_value(cls, value: Any) -> TypeGuard[Mapping[str, Any]]:
        return isinstance(value, Mapping) and "multi_attempt" in value and "first_score" in value

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> "TrialValue":
        """Read a `Score.value` back (logs written before a field existed give it 0)."""
        if not cls.is_value(value):
            raise ValueError(f"not an attempts-judge value: {dict(value) if isinstance(value, Mapping) else value!r}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: float(v) for k, v in value.items() if k in known and isinstance(v, (int, float, bool))})

    @property
    def judged(self) -> bool:
        return self.judge_error < 0.5

    @property
    def attempted(self) -> bool:
        return self.judged and self.n_attempts >= 1


@dataclass(frozen=True)
class Trial:
    """A trial value with the unit it was sampled in: trials of one latent share its cluster."""

    value: TrialValue
    latent: int | None = None  # None: the trial is a cluster of its own
    sample_id: Any = None
    epoch: int = 1


# ------------------------------------------------------------------ a steered answer to continue


@dataclass(frozen=True)
class SourceAnswer:
    """A steered answer that the continuation controls (prefill_detection, matched_prefix) start
    from: read from an eval log, a shipped prefix set or the judge-validation set. Offsets are
    characters of `answer`: no restart starts before `clean_end`; `restart_start` / `restart_end`
    bound the first restart's words (None when the answer has none)."""

    id: str
    model: str | None
    prompt: str
    label: str
    answer: str
    first_score: float
    clean_end: int
    latent: int | None = None
    boost: float | None = None
    prompt_id: str | None = None
    restart_start: int | None = None
    restart_end: int | None = None
    origin: dict[str, Any] = field(default_factory=dict)  # log, sample id, task: where it came from

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SourceAnswer":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# ------------------------------------------------------------------ the detectors file


@dataclass(frozen=True)
class PromptSetRecord:
    """The prompts detectors were discovered on: the set's name (or file), a hash of the whole
    set, and each prompt's hash (`sampling.prompts.prompt_hash`), so a run on other prompts can
    be checked for overlap without the discovery file at hand."""

    set: str
    sha1: str
    prompt_hashes: tuple[str, ...]

    @classmethod
    def of(cls, name: str, texts: list[str]) -> "PromptSetRecord":
        import hashlib

        from esr_eval.sampling.prompts import prompt_hash

        hashes = tuple(prompt_hash(t) for t in texts)
        return cls(name, hashlib.sha1("\n".join(hashes).encode()).hexdigest()[:16], hashes)

    def shared(self, texts: list[str]) -> list[str]:
        """The texts that are also discovery prompts (case and spacing aside)."""
        from esr_eval.sampling.prompts import prompt_hash

        known = set(self.prompt_hashes)
        return [t for t in texts if prompt_hash(t) in known]

    def to_dict(self) -> dict[str, Any]:
        return {"set": self.set, "sha1": self.sha1, "prompt_hashes": list(self.prompt_hashes)}

    @classmethod
    def from_dict(cls, data: Any) -> "PromptSetRecord | None":
        if not isinstance(data, Mapping) or not isinstance(data.get("prompt_hashes"), list):
            return None
        return cls(str(data.get("set")), str(data.get("sha1")), tuple(str(h) for h in data["prompt_hashes"]))


@dataclass
class DetectorsFile:
    """What `esr-eval find-detectors` writes and the ablation tasks, `capability` and `episodes` read."""

    latents: list[int]
    model: str | None = None
    dictionary: str | None = None
    layer: int | None = None
    rule: str | None = None
    stats: list[dict[str, Any]] = field(default_factory=list)
    firing_frequency: list[float] = field(default_factory=list)
    discovery_prompts: PromptSetRecord | None = None  # None: a file written before it was recorded

    FIX = "write one with `esr-eval find-detectors --out FILE`"

    @classmethod
    def read(cls, path: str | Path, allow_empty: bool = False) -> "DetectorsFile":
        from esr_eval.errors import DataFileError
        from esr_eval.files import read_json

        data = read_json(path, "detectors file", cls.FIX)
        latents = data.get("latents") if isinstance(data, dict) else None
        if not isinstance(latents, list) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in latents):
            raise DataFileError(path, None, 'is not a detectors file (it needs "latents": [int, ...])', cls.FIX)
        if not latents and not allow_empty:
            raise DataFileError(path, None, "lists no detector latents", "rerun find-detectors with --rule auc or more prompts")
        return cls(
            latents=[int(k) for k in latents],
            model=data.get("model"),
            dictionary=data.get("dictionary"),
            layer=None if data.get("layer") is None else int(data["layer"]),
            rule=data.get("rule"),
            stats=list(data.get("stats") or []),
            firing_frequency=[float(f) for f in data.get("firing_frequency") or []],
            discovery_prompts=PromptSetRecord.from_dict(data.get("discovery_prompts")),
        )

    def write(self, path: str | Path) -> Path:
        from esr_eval.files import atomic_write_text

        data = asdict(self)
        data["discovery_prompts"] = self.discovery_prompts.to_dict() if self.discovery_prompts else None
        return atomic_write_text(path, json.dumps(data, indent=1))

    def check_held_out(self, texts: list[str], name: str, path: str | Path) -> str | None:
        """Refuse prompts the detectors were discovered on; a note when the file records none."""
        from esr_eval.errors import UsageError

        record = self.discovery_prompts
        if record is None:
            return f"{path} records no discovery prompts: the ablation prompts were not checked for overlap"
        shared = record.shared(texts)
        if shared:
            raise UsageError(
                f"{len(shared)} of the {len(texts)} prompts in {name} were used to discover the detectors in {path} "
                f"(prompts {record.set}, e.g. {shared[0]!r}): measure the ablation on held-out prompts "
                f"(-T prompts=SET or FILE), or rediscover with `esr-eval find-detectors --prompts OTHER`"
            )
        return None


# ------------------------------------------------------------------ fine-tuning


FINETUNE_METRICS_FILE = "finetune_metrics.json"


@dataclass(frozen=True)
class FinetuneInfo:
    """What `esr-eval finetune` records about a merged model; eval logs carry it as task
    metadata `finetune`."""

    base_model: str | None = None
    mixing_ratio: float | None = None
    rows: int | None = None
    correction_rows: int | None = None
    optimizer_steps: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    recipe: str | None = None  # "self-correction" or "steered self-correction"
    training_latents: tuple[int, ...] = ()  # latents steered in training: an evaluation never uses them

    @classmethod
    def of_model(cls, model_source: str) -> "FinetuneInfo | None":
        """Read from a merged model folder; None when `model_source` is not one."""
        path = Path(model_source).expanduser() / FINETUNE_METRICS_FILE
        if not path.is_file():
            return None
        metrics = json.loads(path.read_text())
        last = (metrics.get("epochs") or [{}])[-1]
        return cls(
            base_model=metrics.get("base_model"),
            mixing_ratio=metrics.get("mixing_ratio"),
            rows=metrics.get("rows"),
            correction_rows=metrics.get("correction_rows"),
            optimizer_steps=metrics.get("optimizer_steps"),
            train_loss=last.get("train_loss"),
            val_loss=last.get("val_loss"),
            recipe=metrics.get("recipe"),
            training_latents=tuple(int(k) for k in metrics.get("training_latents") or ()),
        )

    @classmethod
    def of_metadata(cls, metadata: Mapping[str, Any] | None) -> "FinetuneInfo | None":
        data = (metadata or {}).get("finetune")
        if not isinstance(data, Mapping):
            return None
        known = {f.name for f in fields(cls)}
        info = {k: v for k, v in data.items() if k in known}
        info["training_latents"] = tuple(info.get("training_latents") or ())
        return cls(**info)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["training_latents"] = list(self.training_latents)
        return out
