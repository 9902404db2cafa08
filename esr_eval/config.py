"""The one home of defaults, and the typed arguments of tasks (`-T`) and of the steered model (`-M`).

Imports nothing heavy: the command-line parsers read their defaults from here.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

PROVIDER = "steered"
DEFAULT_MODEL_NAME = "smollm2-135m"
DEFAULT_MODEL = f"{PROVIDER}/{DEFAULT_MODEL_NAME}"
OFFLINE_GRADER = "esr_judge/minilm"
GRADER_ROLE = "grader"
LM_EVAL_TASK = "esr_mc"  # the packaged multiple-choice task (esr_eval/assets/lm_eval)


@dataclass(frozen=True)
class Generation:
    """Sampling settings of steered answers (METHOD.md: temperature 0.6, repetition penalty 1.1;
    the answer budget is 384 tokens here against the paper's 512, for CPU run time)."""

    max_tokens: int = 384
    temperature: float = 0.6
    top_p: float = 1.0
    repetition_penalty: float = 1.1  # a preset may set its own


GENERATION = Generation()
PROVIDER_MAX_TOKENS = 512  # a request to the provider that names no budget (the paper's cap)
ENGINES = ("hf", "vllm")  # -M engine=...: the backends behind the steered/ provider
DEFAULT_DTYPE = "bfloat16"  # measured: see benchmarks/steered_throughput.py and docs/notes/engine.md


@dataclass(frozen=True)
class TaskArgs:
    """`-T` arguments every ESR task shares (a variant adds its own)."""

    prompts: str | None = None  # txt / jsonl / csv file; None: the packaged "explain how" set
    n_latents: int = 8
    prompts_per_latent: int = 5
    latents: list[int] | None = None  # pin latents instead of sampling
    seed: int = 0
    relevance: str = "topk"  # or "strict"
    concreteness: str | None = None  # a model that rates label concreteness (keeps >= 65)
    target: float = 0.3  # first-attempt score (0-1) the calibration aims at
    calibration_trials: int = 6  # scored answers per latent in calibration, over all rounds
    calibration_rounds: int = 2  # sequential rounds (1-4); each probes several boosts at once
    threshold_cache: str | None = None  # None: <cache dir>/thresholds.jsonl
    max_tokens: int = GENERATION.max_tokens
    temperature: float = GENERATION.temperature
    top_p: float = GENERATION.top_p

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, args: dict[str, Any], task: str, own: tuple[str, ...] = ()) -> "TaskArgs":
        """Coerce `-T` values (YAML gives strings, ints or lists) and check them; an unknown name
        is an error that lists the accepted ones (the task's own included)."""
        from esr_eval.errors import UsageError, unknown_names

        unknown_names(args, [*cls.names(), *own], f"task args for {task}")
        given = {k: v for k, v in args.items() if v is not None and v != ""}
        try:
            parsed = cls(
                prompts=None if given.get("prompts") is None else str(given["prompts"]),
                n_latents=int(given.get("n_latents", cls.n_latents)),
                prompts_per_latent=int(given.get("prompts_per_latent", cls.prompts_per_latent)),
                latents=int_list(given.get("latents")),
                seed=int(given.get("seed", cls.seed)),
                relevance=str(given.get("relevance", cls.relevance)),
                concreteness=None if given.get("concreteness") is None else str(given["concreteness"]),
                target=float(given.get("target", cls.target)),
                calibration_trials=int(given.get("calibration_trials", cls.calibration_trials)),
                calibration_rounds=int(given.get("calibration_rounds", cls.calibration_rounds)),
                threshold_cache=None if given.get("threshold_cache") is None else str(given["threshold_cache"]),
                max_tokens=int(given.get("max_tokens", cls.max_tokens)),
                temperature=float(given.get("temperature", cls.temperature)),
                top_p=float(given.get("top_p", cls.top_p)),
            )
        except (TypeError, ValueError) as err:
            raise UsageError(f"cannot read the task args of {task} ({err}): check the -T values") from None
        parsed.check()
        return parsed

    def check(self) -> None:
        from esr_eval.errors import UsageError

        if not 0.0 < self.target < 1.0:
            raise UsageError(f"target {self.target} must lie in (0, 1): it is the first-attempt score (0-1) to calibrate to")
        if self.relevance not in ("topk", "strict"):
            raise UsageError(f"relevance {self.relevance!r} is unknown: use topk or strict")
        if self.n_latents < 1 or self.prompts_per_latent < 1 or self.calibration_trials < 1 or self.max_tokens < 1:
            raise UsageError("n_latents, prompts_per_latent, calibration_trials and max_tokens must be at least 1")
        if not 1 <= self.calibration_rounds <= 4:
            raise UsageError(f"calibration_rounds {self.calibration_rounds} must be 1..4")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UsageError(f"temperature {self.temperature} must be >= 0 and top_p {self.top_p} in (0, 1]")

    def generation(self) -> dict[str, Any]:
        """The GenerateConfig fields of a steered answer."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}


@dataclass(frozen=True)
class ModelArgs:
    """`-M` arguments of the `steered/` provider."""

    dictionary: str | None = None  # SAE / direction-set folder, sae-lens RELEASE/SAE_ID or preset
    layer: int | None = None
    labels: str | None = None
    dtype: str | None = None  # None: the preset's, else DEFAULT_DTYPE
    device: str = "cpu"
    max_batch_size: int = 64  # rows decoding at once: the default eval keeps about 40 in flight
    repetition_penalty: float | None = None  # None: the preset's, else GENERATION's
    engine: str = "hf"  # one of ENGINES
    device_map: str | dict | None = None  # "auto" (accelerate) or module -> device; None: the preset's, else all on `device`
    max_memory: dict | None = None  # device -> size ("0=70GiB,1=70GiB,cpu=200GiB"); implies device_map=auto

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, args: dict[str, Any]) -> "ModelArgs":
        from esr_eval.errors import UsageError, unknown_names

        unknown_names(args, cls.names(), "model args (-M) for steered/")
        given = {k: v for k, v in args.items() if v is not None and v != ""}
        try:
            parsed = cls(
                dictionary=None if given.get("dictionary") is None else str(given["dictionary"]),
                layer=None if given.get("layer") is None else int(given["layer"]),
                labels=None if given.get("labels") is None else str(given["labels"]),
                dtype=None if given.get("dtype") is None else str(given["dtype"]),
                device=str(given.get("device", cls.device)),
                max_batch_size=int(given.get("max_batch_size", cls.max_batch_size)),
                repetition_penalty=None if given.get("repetition_penalty") is None else float(given["repetition_penalty"]),
                engine=str(given.get("engine", cls.engine)),
                device_map=_device_map(given.get("device_map")),
                max_memory=parse_max_memory(given.get("max_memory")),
            )
        except (TypeError, ValueError) as err:
            raise UsageError(f"cannot read the model args ({err}): check the -M values") from None
        if parsed.max_batch_size < 1:
            raise UsageError(f"max_batch_size {parsed.max_batch_size} must be at least 1")
        check_engine(parsed.engine)
        if parsed.dtype is not None and parsed.dtype not in DTYPES:
            raise UsageError(f"dtype {parsed.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
        return parsed

    def backend_args(self) -> dict[str, Any]:
        """The backend's own load arguments (`Engine.load(..., **backend_args)`), given ones only."""
        given = {"device_map": self.device_map, "max_memory": self.max_memory} if self.engine == "hf" else {}
        return {k: v for k, v in given.items() if v is not None}


DTYPES = ("float32", "bfloat16", "float16")


def check_engine(name: str) -> None:
    from esr_eval.errors import UsageError

    if name not in ENGINES:
        raise UsageError(f"engine {name!r} is unknown: use one of {', '.join(ENGINES)} (-M engine=hf)")


def parse_max_memory(value: Any) -> dict[int | str, str] | None:
    """`-M max_memory` as accelerate wants it: `{0: "70GiB", "cpu": "200GiB"}`, from a dict or
    "0=70GiB,1=70GiB,cpu=200GiB"; device indices become ints."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in value.strip("{}").split(",") if item.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"max_memory {value!r} is not DEVICE=SIZE,...")
        value = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(value, dict):
        raise ValueError(f"max_memory {value!r} is not DEVICE=SIZE,...")
    return {int(k) if str(k).isdigit() else str(k): v if isinstance(v, int) else str(v) for k, v in value.items()}


def _device_map(value: Any) -> str | dict | None:
    return value if value is None or isinstance(value, dict) else str(value)


@dataclass(frozen=True)
class LoraSettings:
    """`esr-eval finetune` (the paper: r 32, alpha 16, dropout 0.05, lr 2e-4, 4 epochs, batch 8)."""

    rank: int = 32
    alpha: int = 16
    dropout: float = 0.05
    lr: float = 2e-4
    epochs: int = 4
    batch_size: int = 8  # effective batch per optimizer step
    micro_batch_size: int = 4
    warmup_steps: int = 10
    val_fraction: float = 0.05
    max_steps: int | None = None
    max_length: int = 512
    target_modules: tuple[str, ...] | None = None  # None: the attention projections
    seed: int = 0

    def check(self) -> None:
        from esr_eval.errors import UsageError

        if self.rank < 1 or self.epochs < 1 or self.batch_size < 1 or self.micro_batch_size < 1:
            raise UsageError("--rank, --epochs and the batch sizes must be at least 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"validation share {self.val_fraction} must be in [0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps {self.max_steps}: give at least 1 (or leave it out)")


def int_list(value: Any) -> list[int] | None:
    """-T values arrive through YAML: `[1,2]`, `1,2`, `"1"` or `1`."""
    items = str_list(value)
    return None if items is None else [int(v) for v in items]


def str_list(value: Any) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = [v for v in value.strip("[]").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [str(v).strip() for v in value]
