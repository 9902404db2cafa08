"""Building engines: one per configuration per process, from a preset, hub id, folder or GGUF, on
the backend `-M engine=` names (hf: Hugging Face transformers, in process; vllm: vLLM with
vllm-lens, an optional extra imported only when asked for). Every backend is a `SteeringEngine`
built by its class's `load`."""

from __future__ import annotations

import threading
from typing import Any

from esr_eval.config import ModelArgs, check_engine
from esr_eval.steering.engine import EngineSpec, SteeringEngine

_engines: dict[tuple, SteeringEngine] = {}
_engines_lock = threading.Lock()


def engine_class(engine: str = "hf") -> type[SteeringEngine]:
    """The backend's engine class; a one-line UsageError for an unknown name, before anything loads.
    Importing a backend module imports no engine library (vLLM loads inside `VLLMEngine.load`)."""
    check_engine(engine)
    if engine == "vllm":
        from esr_eval.steering.backends.vllm import VLLMEngine

        return VLLMEngine
    from esr_eval.steering.backends.hf import HFEngine

    return HFEngine


def preflight(engine: str, backend_args: dict[str, Any]) -> None:
    """Every check of an engine configuration that needs no model (unknown name; for vllm: parallel
    sizes against the devices, then missing packages, naming the pip command)."""
    check_engine(engine)
    if engine == "vllm":
        from esr_eval.steering.backends.vllm import preflight as vllm_preflight

        vllm_preflight(
            backend_args.get("tensor_parallel_size", 1), backend_args.get("pipeline_parallel_size", 1), backend_args.get("base_url")
        )


def load_engine(
    model: str,
    dictionary: str | None = None,
    layer: int | None = None,
    labels: str | None = None,
    dtype: str | None = None,
    device: str = "cpu",
    engine: str = "hf",
    max_batch_size: int = ModelArgs.max_batch_size,
    **backend_args: Any,
) -> SteeringEngine:
    """`load_spec` of the spec these name (the short form for scripts and tests)."""
    return load_spec(EngineSpec(model, dictionary, layer, labels, dtype, device, engine, max_batch_size, backend_args))


def load_spec(spec: EngineSpec) -> SteeringEngine:
    """One engine per spec (`EngineSpec.key`) per process; the backend's `load` builds it."""
    cls = engine_class(spec.engine)
    key = spec.key()
    with _engines_lock:
        if key not in _engines:
            loaded = cls.load(spec.model, spec.dictionary, spec.layer, spec.labels, spec.dtype, spec.device, **spec.backend_args)
            loaded.max_batch_size = int(spec.max_batch_size)
            _engines[key] = loaded
        return _engines[key]


def load_unsteered_engine(model: str, dtype: str | None = None, device: str = "cpu") -> SteeringEngine:
    """An engine with no dictionary, for unsteered answers (a preset's SAE is not loaded)."""
    from esr_eval.steering.backends.hf import HFEngine
    from esr_eval.steering.models import apply_adapter, load_causal_lm, resolve_dtype
    from esr_eval.steering.presets import get_preset

    preset = get_preset(model)
    if preset is None:
        return load_engine(model, dtype=dtype, device=device)
    device_map, dtype = preset.placement(None, dtype, device)
    lm, tokenizer = load_causal_lm(preset.model_source(), dtype=resolve_dtype(dtype, device_map or device), device=device, device_map=device_map)
    if preset.adapter:
        lm = apply_adapter(lm, preset.adapter)
    return HFEngine(lm, tokenizer, None, name=model, chat_template=preset.chat_template)
