"""Model comparison: one task over several models as an Inspect eval set (`esr-eval compare`)."""

from __future__ import annotations

from typing import Any

import yaml

from esr_eval.config import PROVIDER
from esr_eval.errors import UsageError

# Inspect providers whose model names pass through unchanged (anything else, hub ids included,
# is a steered model source).
INSPECT_PROVIDERS = (
    PROVIDER,
    "mockllm",
    "openai",
    "anthropic",
    "google",
    "mistral",
    "grok",
    "groq",
    "together",
    "openrouter",
    "bedrock",
    "azureai",
    "hf",
    "vllm",
    "sglang",
    "ollama",
    "llama-cpp-python",
)


def parse_kv(pairs: list[str], flag: str) -> dict[str, Any]:
    """`k=v` pairs; values read as YAML, as `inspect eval -T` does."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"cannot read {flag} {pair!r}: write {flag} key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def model_names(models: str) -> list[str]:
    """Presets or sources become `steered/<x>`; names with a provider prefix stay as they are."""
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise UsageError("--models is empty: pass e.g. --models smollm2-135m,gemma-3-270m")
    return [m if m.split("/", 1)[0] in INSPECT_PROVIDERS and "/" in m else f"{PROVIDER}/{m}" for m in names]
