"""The one home of defaults, and the typed arguments of tasks (`-T`) and of the steered model (`-M`).

Imports nothing heavy: the command-line parsers read their defaults from here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ASSETS_DIR = Path(__file__).resolve().parent / "assets"  # the shipped data (a folder, not a module)


def asset_path(*parts: str) -> Path:
    """A shipped file or folder under `esr_eval/assets/`."""
    return ASSETS_DIR.joinpath(*parts)


PROVIDER = "steered"
DEFAULT_MODEL_NAME = "smollm2-135m"
DEFAULT_MODEL = f"{PROVIDER}/{DEFAULT_MODEL_NAME}"
OFFLINE_GRADER = "esr_judge/minilm"
GRADER_ROLE = "grader"
DISCOVERY_PROMPTS = "factual"  # find-detectors' default prompt set: the evaluation set (explain_how) stays held out
OFF_TOPIC_MAX_SCORE = 30.0  # a steered answer whose first attempt scores at most this went off topic
LM_EVAL_TASK = "esr_mc"  # the packaged multiple-choice task (esr_eval/assets/lm_eval)


@dataclass(frozen=True)
class Generation:
    """Sampling settings of steered answers (docs/method.md: temperature 0.6, repetition penalty 1.1;
    the answer budget is 384 tokens here against the paper's 512, for CPU run time)."""

    max_tokens: int = 384
    temperature: float = 0.6
    top_p: float = 1.0
    repetition_penalty: float = 1.1  # a preset may set its own


GENERATION = Generation()
PROVIDER_MAX_TOKENS = 512  # a request to the provider that names no budget (the paper's cap)
DEFAULT_DTYPE = "bfloat16"  # where the hardware has it; float32 on CPUs without bf16 instructions (steering.models.resolve_dtype)
DATA_GENERATION_DTYPE = "bfloat16"  # train-sae and finetune-data: the model writes its corpus / rows
FULL_PRECISION_DTYPE = "float32"  # finetune (LoRA training) and capability (lm-eval accuracy)
# Cap on a grader's reply unless its role sets max_tokens (`--model-role 'grader={model: ...,
# max_tokens: N}'`): the attempts JSON of a 384-token answer fits in well under 1024 tokens.
GRADER_MAX_TOKENS = 1024


@dataclass(frozen=True)
class ConceptFilter:
    """Which latents are concepts worth steering. Offline (from `latent_stats.json`, written by
    `esr-eval label-sae`): token share at most `max_token_share` (the share of a latent's
    strongest firing tokens that are punctuation, digits, function words or word pieces) and
    coherence at least `min_coherence` (mean cosine of its top contexts' MiniLM embeddings; on
    the shipped SAEs' corpora random contexts score about 0.2). With an LLM: rating >= `min_rating`."""

    max_token_share: float = 0.5
    min_coherence: float = 0.3
    min_rating: float = 65.0  # the paper keeps labels an LLM rates >= 65 of 100


CONCEPT_FILTER = ConceptFilter()
@dataclass(frozen=True)
class Continuation:
    """The continuation controls (prefill_detection, matched_prefix): docs/method.md, "The paper's v2 controls"."""

    prefix_tokens: int = 48  # prefill: the prefix is the most whole sentences within this budget
    max_first_score: float = 30.0  # prefill: the source answer went off topic (first attempt <= this)
    on_topic_tokens: int = 16  # matched prefix: tokens kept after the restart (k)
    control_sets: int = 1  # prefill: random-latent sets ablated (each a condition's run per pair)


CONTINUATION = Continuation()
# The budget of the calibration searches (`bisect_boost`, `calibrate_in_rounds`) when a caller
# names none; tasks and `esr-eval calibrate` pass TaskArgs.calibration_trials (6) instead.
SEARCH_MAX_TRIALS = 10


@dataclass(frozen=True)
class SaeRecipe:
    """`esr-eval train-sae`'s defaults: the recipe of the shipped SAEs."""

    width: int = 4608  # latents
    k: int = 32  # active latents per token (TopK)
    tokens: int = 500_000  # training tokens (held-out text comes on top)
    epochs: int = 3
    batch_size: int = 2048
    lr: float = 5e-4
    aux_coefficient: float = 1.0  # weight of the TopK dead-latent loss
    dead_window: int = 20_000  # tokens without firing before a latent counts as dead
    seed: int = 0
    dtype: str = DATA_GENERATION_DTYPE
    gen_batch: int = 64  # prompts generated per batch
    max_new_tokens: int = 192
    pydoc_share: float = 0.0  # share of tokens from Python's pydoc topics
    heldout_share: float = 0.05  # held-out tokens, as a share of `tokens`
    max_norm_ratio: float = 10.0  # drop positions above this x median norm
    ce_docs: int = 64  # held-out documents for CE loss recovered (0: skip)
    n_examples: int = 20  # top examples per latent for labels


SAE_RECIPE = SaeRecipe()
CONCRETENESS_OFFLINE = "offline"  # -T concreteness=offline (the default): read latent_stats.json
CONCRETENESS_OFF = "none"


@dataclass(frozen=True)
class TaskArgs:
    """`-T` arguments every ESR task shares (a variant adds its own)."""

    prompts: str | None = None  # txt / jsonl / csv file; None: the packaged "explain how" set
    n_latents: int = 8
    prompts_per_latent: int = 5
    latents: list[int] | None = None  # pin latents instead of sampling
    seed: int = 0
    relevance: str = "topk"  # or "strict"
    concreteness: str = CONCRETENESS_OFFLINE  # "offline", "none", or a model that rates labels (keeps >= 65)
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
        from esr_eval.errors import unknown_names

        unknown_names(args, [*cls.names(), *own], f"task args for {task}")
        parsed = cls(**_coerce_all(cls, args, "-T", TASK_CASTS))
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
        if self.latents is not None:
            check_latent_list(self.latents, "-T latents")

    def generation(self) -> dict[str, Any]:
        """The GenerateConfig fields of a steered answer."""
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p}


ENGINES = ("hf", "vllm")


@dataclass(frozen=True)
class ModelArgs:
    """`-M` arguments of the `steered/` provider."""

    dictionary: str | None = None  # SAE / direction-set folder, sae-lens RELEASE/SAE_ID or preset
    layer: int | None = None
    labels: str | None = None
    dtype: str | None = None  # None: the preset's, else DEFAULT_DTYPE where the hardware computes in it (resolve_dtype)
    device: str = "cpu"
    max_batch_size: int = 64  # rows decoding at once: the default eval keeps about 40 in flight
    repetition_penalty: float | None = None  # None: the preset's, else GENERATION's
    engine: str = "hf"  # one of ENGINES: "hf" (transformers, in process) or "vllm" (vllm-lens; in process, or a `vllm serve` at --model-base-url)
    device_map: str | dict | None = None  # hf: "auto" (accelerate) or module -> device; None: the preset's, else all on `device`
    max_memory: dict | None = None  # hf: device -> size ("0=70GiB,1=70GiB,cpu=200GiB"); implies device_map=auto
    tensor_parallel_size: int = 1  # vllm only
    pipeline_parallel_size: int = 1  # vllm only
    max_model_len: int | None = None  # vllm only; None: the model's context length

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def parse(cls, args: dict[str, Any]) -> "ModelArgs":
        from esr_eval.errors import UsageError, unknown_names

        unknown_names(args, cls.names(), "model args (-M) for steered/")
        parsed = cls(**_coerce_all(cls, args, "-M", MODEL_CASTS))
        if parsed.max_batch_size < 1 or parsed.tensor_parallel_size < 1 or parsed.pipeline_parallel_size < 1:
            raise UsageError("-M max_batch_size, tensor_parallel_size and pipeline_parallel_size must be at least 1")
        if parsed.layer is not None and parsed.layer < 0:
            raise UsageError(f"-M layer={parsed.layer} is negative: pass a decoder layer index (0 is the first)")
        if parsed.repetition_penalty is not None and parsed.repetition_penalty <= 0:
            raise UsageError(f"-M repetition_penalty={parsed.repetition_penalty} must be above 0 (1 is off; the default is {GENERATION.repetition_penalty})")
        if parsed.labels is not None and not Path(parsed.labels).expanduser().is_file():
            from esr_eval.errors import MissingFileError

            raise MissingFileError(f"-M labels={parsed.labels}: no such file; pass a JSON or CSV file of index -> label")
        check_engine(parsed.engine)
        if parsed.dtype is not None and parsed.dtype not in DTYPES:
            raise UsageError(f"-M dtype={parsed.dtype!r} is unknown: use one of {', '.join(DTYPES)}")
        if parsed.engine != "vllm" and (parsed.tensor_parallel_size, parsed.pipeline_parallel_size, parsed.max_model_len) != (1, 1, None):
            raise UsageError("tensor_parallel_size, pipeline_parallel_size and max_model_len are vLLM settings: add -M engine=vllm")
        if parsed.engine != "hf" and (parsed.device_map, parsed.max_memory) != (None, None):
            raise UsageError(
                "device_map and max_memory place the HF engine's layers: with -M engine=vllm use tensor_parallel_size "
                "and pipeline_parallel_size instead"
            )
        return parsed

    def backend_args(self, base_url: str | None = None) -> dict[str, Any]:
        """The backend's own keywords of its engine's `load` (`SteeringEngine.load`): hf: device_map
        and max_memory where given; vllm: the parallel sizes, context length, batch rows and server."""
        if self.engine == "vllm":
            return {
                "tensor_parallel_size": self.tensor_parallel_size,
                "pipeline_parallel_size": self.pipeline_parallel_size,
                "max_model_len": self.max_model_len,
                "max_num_seqs": self.max_batch_size,
                "base_url": base_url,
            }
        given = {"device_map": self.device_map, "max_memory": self.max_memory}
        return {k: v for k, v in given.items() if v is not None}


DTYPES = ("float32", "bfloat16", "float16")


def check_latent_list(latents: list[int], flag: str) -> None:
    """Latent indices are non-negative and each is given once (a repeat would be a duplicate sample)."""
    from esr_eval.errors import UsageError

    negative = [k for k in latents if k < 0]
    if negative:
        raise UsageError(f"{flag}: latent {negative[0]} is negative; latents are indices 0..width-1 of the dictionary")
    repeated = sorted({k for k in latents if latents.count(k) > 1})
    if repeated:
        raise UsageError(f"{flag}: latent {repeated[0]} is given twice; list each latent once (use -T prompts_per_latent for more trials)")


def check_latents_within(latents: list[int], width: int | None, flag: str) -> None:
    """Latent indices below the dictionary's width (None: unknown until the dictionary loads)."""
    from esr_eval.errors import UsageError

    if width is None:
        return
    outside = [k for k in latents if k >= width]
    if outside:
        raise UsageError(f"{flag}: latent {outside[0]} is outside the dictionary (0..{width - 1}): pick an index below its width "
                         "(`esr-eval latents --search WORD` lists them)")  # fmt: skip


def check_engine(name: str) -> None:
    """An engine name is one of ENGINES (the message names the -M option)."""
    from esr_eval.errors import UsageError

    if name not in ENGINES:
        raise UsageError(f"-M engine={name!r} is unknown: use one of {', '.join(ENGINES)}")


def parse_max_memory(value: Any) -> dict[int | str, int | str] | None:
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


def _device_map(value: Any) -> str | dict:
    return value if isinstance(value, dict) else str(value)


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


@dataclass(frozen=True)
class SteeredDataSettings:
    """`esr-eval make-finetune-data --steered`: steering-aware self-correction rows. Boosts are in
    units of a latent's steering scale (the median residual norm at the layer over the prompts,
    divided by the norm of the latent's decoder row; calibrated thresholds of the embedded model
    fall at 0.2-0.4 of it)."""

    n: int = 500
    correction_share: float = 0.5  # the model's own drift under steering, a recovery line, a good answer
    steered_share: float = 0.25  # steered below the derailing boost, answered without a restart
    n_latents: int = 48  # training latents (the evaluation never steers them)
    derail_scale: tuple[float, float] = (0.35, 0.6)
    mild_scale: tuple[float, float] = (0.05, 0.15)
    drift_tokens: tuple[int, int] = (20, 56)  # length of the off-topic start
    answer_tokens: int = 200
    derailed_below: float = 0.5  # a drift whose first-attempt score is below this counts as derailed
    on_topic_above: float = 0.6  # a mildly steered answer kept as a no-restart row scores at least this
    seed: int = 0

    def check(self) -> None:
        from esr_eval.errors import UsageError

        if self.n < 1 or self.n_latents < 1 or not 0 <= self.correction_share + self.steered_share <= 1:
            raise UsageError("--n and --n-latents must be at least 1, and the correction and steered shares add up to at most 1")
        for low, high in (self.derail_scale, self.mild_scale, self.drift_tokens):
            if not 0 <= low <= high:
                raise UsageError(f"range ({low}, {high}) must have 0 <= low <= high")
        if self.mild_scale[1] >= self.derail_scale[0]:
            raise UsageError("the mild boosts must stay below the derailing ones: lower the mild scale or raise the derailing one")


def strict_int(value: Any) -> int:
    """An integer from YAML or text; 32.7, "32.7" and true are refused, never truncated."""
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{value!r} is not an integer")
    return int(value) if isinstance(value, (int, float)) else int(str(value).strip())


def finite_float(value: Any) -> float:
    """A finite number; nan, inf and true are refused."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not finite")
    return number


Cast = tuple[Callable[[Any], Any], str]  # the cast of one argument, and what it expects
INT: Cast = (strict_int, "an integer")
FLOAT: Cast = (finite_float, "a finite number")
TEXT: Cast = (str, "text")
CASTS_BY_TYPE = {"int": INT, "float": FLOAT, "str": TEXT}


def casts_of(cls: Any, special: dict[str, Cast]) -> dict[str, Cast]:
    """Each field's cast (and what it expects) from its annotation (`X | None` casts as X), or
    from `special`: the fields are the one list of argument names."""
    return {
        f.name: special[f.name] if f.name in special else CASTS_BY_TYPE[str(f.type).split("|")[0].strip()]
        for f in fields(cls)
    }


TASK_CASTS = casts_of(TaskArgs, {
    "latents": (lambda v: int_list(v), "a list of integers"),
    "concreteness": (lambda v: _concreteness(v), "offline, none or a model name"),
})  # fmt: skip
MODEL_CASTS = casts_of(ModelArgs, {
    "device_map": (lambda v: _device_map(v), "auto or a module -> device map"),
    "max_memory": (lambda v: parse_max_memory(v), "DEVICE=SIZE,... (0=70GiB,cpu=200GiB)"),
})  # fmt: skip


def _coerce_all(cls, args: dict[str, Any], flag: str, casts: dict) -> dict[str, Any]:
    """The given (non-empty) values of a dataclass's fields, each cast to its type; a value that
    does not cast is a one-line error naming the argument."""
    from esr_eval.errors import UsageError

    out: dict[str, Any] = {}
    for f in fields(cls):
        value = args.get(f.name)
        if value is None or value == "":
            continue
        cast, kind = casts[f.name]
        try:
            out[f.name] = cast(value)
        except (TypeError, ValueError):
            raise UsageError(f"{flag} {f.name}={value!r} is not {kind}: pass {kind} (or leave it out)") from None
    return out


def _concreteness(value: Any) -> str:
    """"offline", "none" (also off / false / no) or a model name."""
    text = str(value).strip()
    return CONCRETENESS_OFF if text.lower() in ("none", "off", "false", "no") else text


def int_list(value: Any) -> list[int] | None:
    """-T values arrive through YAML: `[1,2]`, `1,2`, `"1"` or `1`."""
    items = str_list(value)
    return None if items is None else [strict_int(v) for v in items]


def str_list(value: Any) -> list[str] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        value = [v for v in value.strip("[]").split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
        value = [value]
    return [str(v).strip() for v in value]
