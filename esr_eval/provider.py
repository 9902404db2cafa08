"""Inspect model provider `steered/<preset | hub id | path>` over SteeredLM.

Concurrent `generate()` calls queue up and run as one batched forward pass off the event loop;
each request's steering comes from `config.extra_body` (so it is logged and in the cache key).
Model args (`-M`): dictionary, layer, labels, dtype, device, max_batch_size, repetition_penalty.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from typing import Any

import anyio
from inspect_ai.model import (
    ChatMessage,
    GenerateConfig,
    ModelAPI,
    ModelOutput,
    ModelUsage,
    modelapi,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from esr_eval.steering.engine import GenerationRequest, GenerationResult, SteeredLM
from esr_eval.steering.intervention import steering_from_extra_body
from esr_eval.steering.models import model_fingerprint
from esr_eval.steering.presets import get_preset

PROVIDER = "steered"
DEFAULT_MODEL = f"{PROVIDER}/smollm2-135m"
DEFAULT_MAX_TOKENS = 512
DEFAULT_TEMPERATURE = 0.6

_engines: dict[tuple, SteeredLM] = {}
_engines_lock = threading.Lock()


def load_engine(
    model: str,
    dictionary: str | None = None,
    layer: int | None = None,
    labels: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
) -> SteeredLM:
    """One SteeredLM per (model, dictionary, layer, labels, dtype, device) per process."""
    key = (model, dictionary, None if layer is None else int(layer), labels, dtype, device)
    with _engines_lock:
        if key not in _engines:
            _engines[key] = SteeredLM.load(model, dictionary, layer, labels, dtype, device)
        return _engines[key]


class _Batcher:
    """Collects concurrent requests on one event loop and runs them in bounded batches."""

    def __init__(self, engine: SteeredLM, max_batch_size: int, gather_s: float = 0.02) -> None:
        self.engine = engine
        self.max_batch_size = max_batch_size
        self.gather_s = gather_s
        self.pending: list[tuple[GenerationRequest, asyncio.Future]] = []
        self.draining = False

    async def submit(self, request: GenerationRequest) -> GenerationResult:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((request, future))
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _gather(self, max_waits: int = 20) -> None:
        """Let the other samples of this step queue up: wait while requests keep arriving."""
        for _ in range(max_waits):
            seen = len(self.pending)
            await asyncio.sleep(self.gather_s)
            if len(self.pending) == seen or len(self.pending) >= self.max_batch_size:
                return

    async def _drain(self) -> None:
        try:
            while self.pending:
                await self._gather()
                batch, self.pending = self.pending[: self.max_batch_size], self.pending[self.max_batch_size :]
                try:
                    results = await anyio.to_thread.run_sync(self.engine.generate, [r for r, _ in batch])
                except Exception as err:  # every waiting sample sees the failure
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                else:
                    for (_, fut), result in zip(batch, results):
                        if not fut.done():
                            fut.set_result(result)
        finally:
            self.draining = False


def _message_dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role if m.role != "tool" else "user", "content": m.text} for m in messages]


class SteeredModelAPI(ModelAPI):
    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),
        dictionary: str | None = None,
        layer: int | str | None = None,
        labels: str | None = None,
        dtype: str = "float32",
        device: str = "cpu",
        max_batch_size: int | str = 16,
        repetition_penalty: float | str | None = None,
        **_: Any,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        self.source = model_name
        self.dictionary_spec = dictionary
        self.layer = None if layer in (None, "") else int(layer)
        self.labels = labels
        self.dtype = dtype
        self.device = device
        self.max_batch_size = int(max_batch_size)
        preset = get_preset(model_name)
        default_penalty = preset.repetition_penalty if preset else 1.1
        self.repetition_penalty = float(repetition_penalty) if repetition_penalty is not None else default_penalty
        self._batchers: dict[int, _Batcher] = {}

    @functools.cached_property
    def model_key(self) -> str:
        """Identity of the weights for caches: the source, hashed when it is a local path."""
        return model_fingerprint(self.source)

    @property
    def engine(self) -> SteeredLM:
        """Loaded on first use (Inspect may build a provider only to read its info)."""
        return load_engine(self.source, self.dictionary_spec, self.layer, self.labels, self.dtype, self.device)

    def dictionary_id(self) -> str | None:
        return self.engine.dictionary_id

    def max_tokens(self) -> int | None:
        return DEFAULT_MAX_TOKENS

    def _batcher(self) -> _Batcher:
        loop_id = id(asyncio.get_running_loop())
        if loop_id not in self._batchers:
            self._batchers = {loop_id: _Batcher(self.engine, self.max_batch_size)}
        return self._batchers[loop_id]

    def request_from(self, input: list[ChatMessage], config: GenerateConfig) -> GenerationRequest:
        interventions, dictionary = steering_from_extra_body(config.extra_body)
        self.engine.resolve_dictionary(dictionary)  # an unknown dictionary fails here, not mid-batch
        extra = config.extra_body or {}
        return GenerationRequest(
            messages=_message_dicts(input),
            interventions=interventions,
            max_new_tokens=config.max_tokens or DEFAULT_MAX_TOKENS,
            temperature=DEFAULT_TEMPERATURE if config.temperature is None else float(config.temperature),
            top_p=1.0 if config.top_p is None else float(config.top_p),
            repetition_penalty=float(extra.get("repetition_penalty", self.repetition_penalty)),
            seed=config.seed,
            dictionary=dictionary,
        )

    async def generate(
        self,
        input: list[ChatMessage],
        tools: list[ToolInfo],
        tool_choice: ToolChoice,
        config: GenerateConfig,
    ) -> ModelOutput:
        result = await self._batcher().submit(self.request_from(input, config))
        output = ModelOutput.from_content(model=self.model_name, content=result.text, stop_reason=result.stop_reason)
        output.usage = ModelUsage(
            input_tokens=result.prompt_tokens,
            output_tokens=result.completion_tokens,
            total_tokens=result.prompt_tokens + result.completion_tokens,
        )
        return output


@modelapi(name=PROVIDER)
def steered() -> type[ModelAPI]:
    return SteeredModelAPI


def steered_api(model: Any) -> SteeredModelAPI | None:
    """The SteeredModelAPI behind an Inspect Model, if it is one."""
    api = getattr(model, "api", None)
    return api if isinstance(api, SteeredModelAPI) else None
