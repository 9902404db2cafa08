"""Building engines: one per configuration per process, from a preset, hub id, folder or GGUF."""

from __future__ import annotations

import threading

from esr_eval.steering.backends.hf import SteeredLM
from esr_eval.steering.engine import SteeringEngine
from esr_eval.steering.models import apply_adapter, load_causal_lm
from esr_eval.steering.presets import get_preset

_engines: dict[tuple, SteeringEngine] = {}
_engines_lock = threading.Lock()


def load_engine(
    model: str,
    dictionary: str | None = None,
    layer: int | None = None,
    labels: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    engine: str = "hf",
    **vllm_args,
) -> SteeringEngine:
    """One engine per (model, dictionary, layer, labels, dtype, device, engine and its
    settings) per process. `vllm_args`: `VLLMEngine.load`'s keywords (`ModelArgs.vllm_args`)."""
    key = (model, dictionary, None if layer is None else int(layer), labels, dtype, device, engine, tuple(sorted(vllm_args.items())))
    with _engines_lock:
        if key not in _engines:
            if engine == "vllm":
                from esr_eval.steering.backends.vllm import VLLMEngine

                _engines[key] = VLLMEngine.load(model, dictionary, layer, labels, dtype, device, **vllm_args)
            else:
                _engines[key] = SteeredLM.load(model, dictionary, layer, labels, dtype, device)
        return _engines[key]


def load_unsteered_engine(model: str, dtype: str = "bfloat16", device: str = "cpu") -> SteeringEngine:
    """An engine with no dictionary, for unsteered answers (a preset's SAE is not loaded)."""
    preset = get_preset(model)
    if preset is None:
        return load_engine(model, dtype=dtype, device=device)
    lm, tokenizer = load_causal_lm(preset.model_source(), dtype=dtype, device=device)
    if preset.adapter:
        lm = apply_adapter(lm, preset.adapter)
    return SteeredLM(lm, tokenizer, None, name=model, chat_template=preset.chat_template)
