"""Inspect model provider `steered/<preset | hub id | path>` over a steering engine.

Each `generate()` call streams its request into the engine's running batch (it joins between
decode steps, in the engine's worker thread, off the event loop), so concurrent samples share
forward passes without waiting for the longest row. Each request's steering comes from
`config.extra_body` (so it is logged and in the cache key). Model args (`-M`) are
`config.ModelArgs`; a misspelt one, or an unknown engine, is refused before anything loads.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from inspect_ai.model import (
    ChatMessage,
    GenerateConfig,
    ModelAPI,
    ModelOutput,
    ModelUsage,
    modelapi,
)
from inspect_ai.tool import ToolChoice, ToolInfo

from esr_eval.config import GENERATION, PROVIDER, PROVIDER_MAX_TOKENS, ModelArgs
from esr_eval.errors import UsageError
from esr_eval.steering.engine import EngineSpec, GenerationRequest, SteeringEngine
from esr_eval.steering.intervention import steering_from_extra_body
from esr_eval.steering.load import load_spec, preflight
from esr_eval.steering.models import check_device, model_fingerprint
from esr_eval.steering.presets import (
    check_model_source,
    dictionary_spec,
    get_preset,
    model_layer_count,
)


def _message_dicts(messages: list[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role if m.role != "tool" else "user", "content": m.text} for m in messages]


class SteeredModelAPI(ModelAPI):
    def __init__(
        self,
        model_name: str,
        base_url: str | None = None,
        api_key: str | None = None,
        config: GenerateConfig = GenerateConfig(),
        **model_args: Any,
    ) -> None:
        super().__init__(model_name=model_name, base_url=base_url, api_key=api_key, config=config)
        self.args = ModelArgs.parse(model_args)
        if self.args.engine == "hf":
            check_device(self.args.device)
        if self.args.engine == "hf" and self.base_url is not None:
            raise UsageError("--model-base-url names a vLLM server: add -M engine=vllm (the HF engine runs in process)")
        preflight(self.args.engine, self.args.backend_args(self.base_url))  # before any weights load
        self.source = model_name
        preset = get_preset(model_name)
        default_penalty = preset.repetition_penalty if preset else GENERATION.repetition_penalty
        self.repetition_penalty = self.args.repetition_penalty if self.args.repetition_penalty is not None else default_penalty

    def check_source(self) -> None:
        """The model names something loadable and -M layer lies inside it, known without loading
        (the task checks it first; logs are read with providers that never load)."""
        check_model_source(self.source)
        dictionary_spec(self.source, self.args.dictionary)  # an unknown shipped vector set (vectors/NAME)
        layers = model_layer_count(self.source)
        if self.args.layer is not None and layers is not None and self.args.layer >= layers:
            raise UsageError(f"-M layer={self.args.layer} is outside {self.source} (layers 0..{layers - 1}): pass a layer inside the model")

    @functools.cached_property
    def model_key(self) -> str:
        """Identity of the weights for caches: the source, hashed when it is a local path (or a
        preset that ships an adapter)."""
        preset = get_preset(self.source)
        return preset.model_key() if preset else model_fingerprint(self.source)

    @property
    def engine(self) -> SteeringEngine:
        """Loaded on first use (Inspect may build a provider only to read its info)."""
        self.check_source()
        return load_spec(EngineSpec.of(self.source, self.args, self.base_url))

    def dictionary_id(self) -> str | None:
        return self.engine.dictionary_id

    def max_tokens(self) -> int | None:
        return PROVIDER_MAX_TOKENS

    def max_connections(self) -> int:
        """Enough concurrent samples to fill the engine's batch (used with --max-connections unset
        and adaptive concurrency off)."""
        return max(self.args.max_batch_size, 1)

    def request_from(self, input: list[ChatMessage], config: GenerateConfig) -> GenerationRequest:
        interventions, dictionary = steering_from_extra_body(config.extra_body)
        self.engine.resolve_dictionary(dictionary)  # an unknown dictionary fails here, not mid-batch
        extra = config.extra_body or {}
        return GenerationRequest(
            messages=_message_dicts(input),
            interventions=interventions,
            max_new_tokens=config.max_tokens or PROVIDER_MAX_TOKENS,
            temperature=GENERATION.temperature if config.temperature is None else float(config.temperature),
            top_p=GENERATION.top_p if config.top_p is None else float(config.top_p),
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
        result = await asyncio.wrap_future(self.engine.submit(self.request_from(input, config)))
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
