"""Residual-stream hooks on a Hugging Face causal LM: per-row steering and activation read-out."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

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
class ClampGroup:
    """Rows that clamp latents of one dictionary: `mask[r, j]` says row `rows[r]` clamps `latents[j]`."""

    dictionary: FeatureDictionary
    rows: torch.Tensor  # [R] row indices in the batch
    latents: torch.Tensor  # [U]
    mask: torch.Tensor  # [R, U] bool
    values: torch.Tensor  # [R, U]

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        rows = self.rows.to(h.device)
        f = self.dictionary.encode(h[rows].to(self.mask.device, torch.float32))[..., self.latents]  # [R, T, U]
        delta = torch.where(self.mask[:, None, :], self.values[:, None, :] - f, 0.0)
        h = h.clone()
        h[rows] += (delta @ self.dictionary.W_dec[self.latents].float()).to(h.device, h.dtype)
        return h


@dataclass
class BatchSteering:
    """The interventions of one batch as tensors: one add vector per row, and clamp groups (one
    per dictionary used for clamping). Clamp reads the residual as the model made it; add follows."""

    add: torch.Tensor | None  # [B, d_model]
    clamps: list[ClampGroup]

    @classmethod
    def build(
        cls,
        rows: Sequence[Sequence[Intervention]],
        dictionaries: FeatureDictionary | Sequence[FeatureDictionary | None] | None,
        dtype: torch.dtype,
    ) -> "BatchSteering | None":
        """`dictionaries`: one for the whole batch, or one per row."""
        if not any(rows):
            return None
        per_row: list[FeatureDictionary | None] = (
            list(dictionaries) if isinstance(dictionaries, (list, tuple)) else [cast("FeatureDictionary | None", dictionaries)] * len(rows)
        )
        add = None
        by_dictionary: dict[int, list[int]] = {}
        for b, (row, dictionary) in enumerate(zip(rows, per_row)):
            if not row:
                continue
            if dictionary is None:
                raise ValueError("steering was requested but no dictionary is loaded: pass -M dictionary=...")
            for iv in row:
                dictionary.check_latent(iv.latent)
                if iv.mode == "add":
                    if add is None:
                        add = torch.zeros(len(rows), dictionary.d_model, dtype=torch.float32, device=dictionary.W_dec.device)
                    add[b] += iv.value * dictionary.W_dec[iv.latent].float()
            if any(iv.mode == "clamp" for iv in row):
                by_dictionary.setdefault(id(dictionary), []).append(b)
        clamps = []
        for members in by_dictionary.values():
            dictionary = per_row[members[0]]
            assert dictionary is not None  # rows without one raised above
            latents = sorted({iv.latent for b in members for iv in rows[b] if iv.mode == "clamp"})
            col = {k: j for j, k in enumerate(latents)}
            device = dictionary.W_dec.device
            mask = torch.zeros(len(members), len(latents), dtype=torch.bool, device=device)
            values = torch.zeros(len(members), len(latents), dtype=torch.float32, device=device)
            for r, b in enumerate(members):
                for iv in rows[b]:
                    if iv.mode == "clamp":
                        mask[r, col[iv.latent]] = True
                        values[r, col[iv.latent]] = iv.value
            clamps.append(ClampGroup(dictionary, torch.tensor(members, device=device), torch.tensor(latents, device=device), mask, values))
        return cls(None if add is None else add.to(dtype), clamps)

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        for group in self.clamps:
            h = group.apply(h)
        if self.add is not None:
            if self.add.device != h.device:  # a sharded model: the layer sits on another device
                self.add = self.add.to(h.device)
            h = h + self.add[:, None, :]
        return h


class StopForward(Exception):
    """Raised by the hook once it has recorded the residual a read-out wants: the layers above it
    (and the logits) would change nothing read, so they are not run."""


class ResidualHooks:
    """Forward hook on one decoder layer's output: applies the current batch's steering, and
    optionally records the (steered) residual for read-out.

    The hook holds one batch's steering at a time, so `active` is exclusive across threads: a
    read-out (say, calibration bounds on the event loop) waits for a generating batch (in the
    provider's worker thread) instead of resetting its steering halfway."""

    def __init__(self, layer: nn.Module) -> None:
        self.steering: BatchSteering | None = None
        self.record: list[torch.Tensor] | None = None
        self.stop = False
        self._lock = threading.RLock()
        self._handle = layer.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, output: torch.Tensor | tuple):
        if self.steering is None and self.record is None:
            return None
        h = _hidden(output)
        if self.steering is not None:
            h = self.steering.apply(h)
        if self.record is not None:
            self.record.append(h.detach())
            if self.stop:
                raise StopForward
        return _replace_hidden(output, h)

    @contextmanager
    def active(self, steering: BatchSteering | None, record: bool = False, stop: bool = False) -> Iterator[list[torch.Tensor]]:
        """`stop` (with `record`): end the forward at this layer by raising StopForward, which
        the context swallows; the caller reads the recorded residual and no logits."""
        with self._lock:
            self.steering = steering
            recorded: list[torch.Tensor] = []
            self.record = recorded if record else None
            self.stop = stop and record
            try:
                yield recorded
            except StopForward:
                pass
            finally:
                self.steering = None
                self.record = None
                self.stop = False

    def remove(self) -> None:
        self._handle.remove()
