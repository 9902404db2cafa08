"""Residual-stream hooks on a Hugging Face causal LM: per-row steering and activation read-out."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from esr_eval.steering.dictionary import FeatureDictionary
from esr_eval.steering.intervention import Intervention

# Attribute paths to the list of decoder blocks, by model family.
LAYER_PATHS = (
    "model.layers",  # llama, mistral, qwen2/3, gemma, gemma2, gemma3, phi3
    "model.language_model.layers",  # multimodal wrappers (gemma3 conditional generation)
    "transformer.h",  # gpt2, gpt-j, falcon
    "gpt_neox.layers",  # pythia
    "model.decoder.layers",  # opt
)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    for path in LAYER_PATHS:
        obj: object = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__}: supported layouts are "
        + ", ".join(LAYER_PATHS)
    )


def _hidden(output: torch.Tensor | tuple) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output: torch.Tensor | tuple, hidden: torch.Tensor) -> torch.Tensor | tuple:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@dataclass
class BatchSteering:
    """The interventions of one batch as tensors: one add vector per row, and a clamp table over
    the union of clamped latents (`clamp_mask[b, j]` says row b clamps latent `clamp_latents[j]`)."""

    add: torch.Tensor | None  # [B, d_model]
    clamp_latents: torch.Tensor | None  # [U]
    clamp_mask: torch.Tensor | None  # [B, U] bool
    clamp_values: torch.Tensor | None  # [B, U]

    @classmethod
    def build(
        cls, rows: Sequence[Sequence[Intervention]], dictionary: FeatureDictionary | None, dtype: torch.dtype
    ) -> "BatchSteering | None":
        if not any(rows):
            return None
        if dictionary is None:
            raise ValueError("steering was requested but no dictionary is loaded: pass -M dictionary=...")
        for row in rows:
            for iv in row:
                dictionary.check_latent(iv.latent)
        W_dec = dictionary.W_dec
        add = None
        if any(iv.mode == "add" for row in rows for iv in row):
            add = torch.zeros(len(rows), dictionary.d_model, dtype=torch.float32, device=W_dec.device)
            for b, row in enumerate(rows):
                for iv in row:
                    if iv.mode == "add":
                        add[b] += iv.value * W_dec[iv.latent].float()
            add = add.to(dtype)
        clamped = sorted({iv.latent for row in rows for iv in row if iv.mode == "clamp"})
        if not clamped:
            return cls(add, None, None, None)
        col = {k: j for j, k in enumerate(clamped)}
        mask = torch.zeros(len(rows), len(clamped), dtype=torch.bool, device=W_dec.device)
        values = torch.zeros(len(rows), len(clamped), dtype=torch.float32, device=W_dec.device)
        for b, row in enumerate(rows):
            for iv in row:
                if iv.mode == "clamp":
                    mask[b, col[iv.latent]] = True
                    values[b, col[iv.latent]] = iv.value
        return cls(add, torch.tensor(clamped, device=W_dec.device), mask, values)

    def apply(self, h: torch.Tensor, dictionary: FeatureDictionary | None) -> torch.Tensor:
        """Clamp first (on the residual as the model made it), then add."""
        if self.clamp_latents is not None and dictionary is not None:
            rows = self.clamp_mask.any(-1)
            f = dictionary.encode(h[rows].float())[..., self.clamp_latents]  # [R, T, U]
            delta = torch.where(self.clamp_mask[rows, None, :], self.clamp_values[rows, None, :] - f, 0.0)
            h = h.clone()
            h[rows] += (delta @ dictionary.W_dec[self.clamp_latents].float()).to(h.dtype)
        if self.add is not None:
            h = h + self.add[:, None, :]
        return h


class ResidualHooks:
    """Forward hook on one decoder layer's output: applies the current batch's steering, and
    optionally records the (steered) residual for read-out."""

    def __init__(self, layer: nn.Module, dictionary: FeatureDictionary | None) -> None:
        self.dictionary = dictionary
        self.steering: BatchSteering | None = None
        self.record: list[torch.Tensor] | None = None
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor | tuple):
        if self.steering is None and self.record is None:
            return None
        h = _hidden(output)
        if self.steering is not None:
            h = self.steering.apply(h, self.dictionary)
        if self.record is not None:
            self.record.append(h.detach())
        return _replace_hidden(output, h)

    @contextmanager
    def active(self, steering: BatchSteering | None, record: bool = False) -> Iterator[list[torch.Tensor]]:
        self.steering = steering
        self.record = [] if record else None
        try:
            yield self.record if record else []
        finally:
            self.steering = None
            self.record = None

    def remove(self) -> None:
        self._handle.remove()
