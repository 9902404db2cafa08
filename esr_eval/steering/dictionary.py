"""Feature dictionaries over the residual stream: a sae-lens SAE or a labelled direction set.

Both expose the same small surface: `encode`, `decode`, `W_dec`, `layer`, `d_model`, `d_sae`,
and `labels` (latent index -> text). Steering only needs `W_dec` (add) and `encode` (clamp).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from esr_eval.errors import UsageError

LABEL_FILES = ("labels.json", "labels.csv")
DIRECTIONS_FILE = "directions.safetensors"


class FeatureDictionary(ABC):
    name: str
    layer: int
    labels: dict[int, str]
    folder: Path | None = None  # where it was loaded from, if local (latent_stats.json may sit there)

    @property
    @abstractmethod
    def W_dec(self) -> torch.Tensor:
        """Decoder directions, shape [d_sae, d_model]."""

    @abstractmethod
    def encode(self, h: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> "FeatureDictionary": ...

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.W_dec

    @property
    def d_sae(self) -> int:
        return int(self.W_dec.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.W_dec.shape[1])

    def label(self, latent: int) -> str | None:
        return self.labels.get(int(latent))

    def check_latent(self, latent: int) -> None:
        if not 0 <= int(latent) < self.d_sae:
            raise UsageError(
                f"latent {latent} is outside dictionary {self.name!r} (0..{self.d_sae - 1}): "
                "pick an index below its width (`esr-eval latents --search WORD` lists them)"
            )

    def search(self, query: str) -> list[tuple[int, str]]:
        """Latents whose label contains `query` (case-insensitive)."""
        q = query.lower()
        return [(k, text) for k, text in sorted(self.labels.items()) if q in text.lower()]

    def check_fits(self, hidden_size: int, n_layers: int) -> None:
        if self.d_model != hidden_size:
            raise UsageError(
                f"dictionary {self.name!r} has width {self.d_model} but the model's hidden size is "
                f"{hidden_size}: use a dictionary trained on this model's residual stream"
            )
        if not 0 <= self.layer < n_layers:
            raise UsageError(
                f"dictionary {self.name!r} hooks layer {self.layer} but the model has layers "
                f"0..{n_layers - 1}: pass a layer inside the model (-M layer=N)"
            )


class SAEDictionary(FeatureDictionary):
    """A sae-lens SAE (any architecture sae-lens loads); decoder norms folded into the latents."""

    def __init__(self, sae, name: str, layer: int, labels: dict[int, str]) -> None:
        self.sae = sae
        self.name = name
        self.layer = layer
        self.labels = labels

    @property
    def W_dec(self) -> torch.Tensor:
        return self.sae.W_dec

    @torch.no_grad()
    def encode(self, h: torch.Tensor) -> torch.Tensor:
        return self.sae.encode(h.to(self.sae.W_dec.dtype))

    @torch.no_grad()
    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return self.sae.decode(f.to(self.sae.W_dec.dtype))

    def to(self, device, dtype=None) -> "SAEDictionary":
        self.sae.to(device)
        if dtype is not None:
            self.sae.to(dtype)
        return self


class DirectionSet(FeatureDictionary):
    """Labelled directions (e.g. contrastive mean differences). Latent k = the coefficient of
    direction k: encode(h)_k = <h, d_k> / |d_k|^2, so clamp k to v moves h along d_k only."""

    def __init__(self, directions: torch.Tensor, name: str, layer: int, labels: dict[int, str]) -> None:
        self.directions = directions
        self.name = name
        self.layer = layer
        self.labels = labels

    @property
    def W_dec(self) -> torch.Tensor:
        return self.directions

    @torch.no_grad()
    def encode(self, h: torch.Tensor) -> torch.Tensor:
        d = self.directions
        return (h.to(d.dtype) @ d.T) / (d * d).sum(-1).clamp_min(1e-12)

    def to(self, device, dtype=None) -> "DirectionSet":
        self.directions = self.directions.to(device=device, dtype=dtype or self.directions.dtype)
        return self

    def save(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write the set as a directory (`directions.safetensors`, `config.json`, `labels.json`)."""
        from safetensors.torch import save_file

        from esr_eval.files import atomic_directory

        with atomic_directory(path) as tmp:
            save_file({"directions": self.directions.float().contiguous().cpu()}, str(tmp / DIRECTIONS_FILE))
            os.chmod(tmp / DIRECTIONS_FILE, 0o644)  # safetensors writes a private file
            cfg = {"kind": "directions", "layer": self.layer, "name": self.name, **(metadata or {})}
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
            (tmp / "labels.json").write_text(json.dumps({str(k): v for k, v in self.labels.items()}, indent=2))
        return Path(path)


def read_labels(path: str | Path) -> dict[int, str]:
    """Labels from a JSON object {index: text} / list of {index|latent, label|description}, or a CSV."""
    path = Path(path)
    if path.suffix == ".csv":
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        key = next((k for k in ("index", "latent", "feature") if rows and k in rows[0]), None)
        text = next((k for k in ("label", "description", "text") if rows and k in rows[0]), None)
        if key is None or text is None:
            raise ValueError(f"{path}: a labels CSV needs columns index,label")
        return {int(r[key]): r[text] for r in rows if r[text]}
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        return {int(k): str(v) for k, v in data.items() if v}
    out: dict[int, str] = {}
    for row in data:
        k = row.get("index", row.get("latent", row.get("feature")))
        v = row.get("label", row.get("description", row.get("text")))
        if k is not None and v:
            out[int(k)] = str(v)
    return out


def _labels_beside(folder: Path) -> dict[int, str]:
    for name in LABEL_FILES:
        if (folder / name).exists():
            return read_labels(folder / name)
    return {}


def folder_digest(folder: Path) -> str:
    """A short content hash of a dictionary's weights: a retrained SAE in the same folder gets a
    new identity, so thresholds and detectors cached for the old one are not reused."""
    digest = hashlib.sha1()
    for file in sorted(folder.glob("*.safetensors")):
        digest.update(file.read_bytes())
    return digest.hexdigest()[:8]


def layer_from_hook_name(hook_name: str) -> int:
    """`blocks.12.hook_resid_post` / `model.layers.12` -> 12; `hook_resid_pre` of L -> L - 1."""
    m = re.search(r"(?:blocks|layers|h)\.(\d+)", hook_name)
    if m is None:
        raise ValueError(f"cannot read a layer from hook name {hook_name!r}: pass the layer explicitly")
    layer = int(m.group(1))
    return layer - 1 if "resid_pre" in hook_name else layer


def _sae_layer(sae, override: int | None) -> int:
    if override is not None:
        return int(override)
    hook_name = getattr(sae.cfg.metadata, "hook_name", None) or getattr(sae.cfg, "hook_name", None)
    if not hook_name:
        raise ValueError("the SAE config names no hook: pass the layer explicitly (-M layer=N)")
    return layer_from_hook_name(hook_name)


def load_dictionary(
    spec: str,
    layer: int | None = None,
    labels: str | Path | None = None,
    device: str = "cpu",
) -> FeatureDictionary:
    """Load a dictionary from a local folder (sae-lens SAE or direction set) or a sae-lens
    release given as `RELEASE/SAE_ID` (needs network the first time)."""
    path = Path(os.path.expanduser(spec))
    if path.is_dir():
        if (path / DIRECTIONS_FILE).exists():
            from safetensors.torch import load_file

            cfg = json.loads((path / "config.json").read_text())
            directions = load_file(str(path / DIRECTIONS_FILE))["directions"]
            name = f"{cfg.get('name', path.name)}-{folder_digest(path)}"  # a rebuilt set gets a new identity
            found: FeatureDictionary = DirectionSet(directions, name, int(layer if layer is not None else cfg["layer"]), _labels_beside(path))
        elif (path / "cfg.json").exists():
            from sae_lens import SAE

            sae = SAE.load_from_disk(str(path), device=device, fold_W_dec_norm=True)
            found = SAEDictionary(sae, f"{path.name}-{folder_digest(path)}", _sae_layer(sae, layer), _labels_beside(path))
        else:
            raise ValueError(
                f"{spec} holds neither an SAE (cfg.json) nor a direction set ({DIRECTIONS_FILE}): "
                "point at a folder written by sae-lens or by `DirectionSet.save`"
            )
    elif "/" in spec and not spec.startswith((".", "/", "~")):
        from sae_lens import SAE

        release, sae_id = spec.split("/", 1)
        sae = SAE.from_pretrained(release, sae_id, device=device, fold_W_dec_norm=True)
        found = SAEDictionary(sae, spec, _sae_layer(sae, layer), {})
    else:
        raise ValueError(
            f"dictionary {spec!r} is neither a folder nor RELEASE/SAE_ID: give an SAE folder, "
            "a direction-set folder, a sae-lens release/id or a preset name"
        )
    if labels is not None:
        found.labels = read_labels(labels)
    found.folder = path if path.is_dir() else None
    return found
