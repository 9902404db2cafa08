"""Clamp interventions as vllm-lens per-request hooks, in plain torch.

A hook is cloudpickled and run inside the vLLM workers (over HTTP on a `vllm serve` deployment
that has neither esr-eval nor sae-lens), so this module imports torch only and is pickled by
value (`register_pickle_by_value` in `backends/vllm.py`). The encoders repeat sae-lens' own
`encode` for the architectures whose encode is a few tensor operations (checked against
sae-lens in the tests); any other dictionary falls back to shipping `dictionary.encode` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class LatentEncoder:
    """The activations of a few latents (`columns`) of a dictionary, from the residual `h`.

    kind: "linear" (a direction set: the coefficient along each direction), "relu" (standard
    SAE), "jumprelu" or "topk". For the rank-1 kinds `W_enc` holds only the clamped latents'
    columns; TopK needs every column to know whether a latent is in the top k.
    """

    kind: str
    W_enc: torch.Tensor  # [d_model, n]
    b_enc: torch.Tensor  # [n]
    b_dec: torch.Tensor  # [d_model], subtracted from the input (zeros when the SAE does not)
    threshold: torch.Tensor | None = None  # [n], jumprelu
    k: int | None = None  # topk
    acts_scale: torch.Tensor | None = None  # [n], topk with rescale_acts_by_decoder_norm
    columns: torch.Tensor | None = None  # topk: the clamped latents among the n

    def to(self, device: torch.device) -> "LatentEncoder":
        moved = {name: (value.to(device) if isinstance(value, torch.Tensor) else value) for name, value in vars(self).items()}
        return LatentEncoder(**moved)  # type: ignore[arg-type]  # the same fields, moved

    def encode(self, h: torch.Tensor) -> torch.Tensor:
        """[T, d_model] float32 -> [T, n_clamped]."""
        pre = (h - self.b_dec) @ self.W_enc + self.b_enc
        if self.kind == "linear":
            return pre
        if self.kind == "relu":
            return pre.relu()
        if self.kind == "jumprelu":
            assert self.threshold is not None, "a jumprelu encoder has its threshold"
            return pre.relu() * (pre > self.threshold).to(pre.dtype)
        if self.kind == "topk":
            if self.acts_scale is not None:
                pre = pre * self.acts_scale
            assert self.k is not None, "a topk encoder has its k"
            values, indices = torch.topk(pre, k=self.k, dim=-1, sorted=False)
            acts = torch.zeros_like(pre).scatter_(-1, indices, values.relu())
            return acts[:, self.columns]
        raise ValueError(f"unknown encoder kind {self.kind!r}")

    __call__ = encode


@dataclass
class DictionaryColumns:
    """Fallback encoder: the dictionary's own `encode` (the workers then need esr-eval and
    sae-lens installed, as an in-process engine's always have)."""

    dictionary: Any  # a FeatureDictionary, pickled by reference
    latents: torch.Tensor  # [n_clamped]

    def to(self, device: torch.device) -> "DictionaryColumns":
        return DictionaryColumns(self.dictionary.to(device, torch.float32), self.latents.to(device))

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        return self.dictionary.encode(h)[:, self.latents].float()


@dataclass
class ClampHook:
    """A vllm-lens hook `fn(ctx, h)`: clamp latents to values at every position, then add the
    request's add vector (the Hugging Face backend's order: clamp reads the residual as the
    model made it). `encoder`: a `LatentEncoder` or `DictionaryColumns`, [T, d] -> [T, n_clamped]."""

    encoder: Any
    values: torch.Tensor  # [n_clamped]
    W_dec: torch.Tensor  # [n_clamped, d_model] decoder rows of the clamped latents
    add: torch.Tensor | None = None  # [d_model], in the model's dtype

    def __post_init__(self) -> None:
        self._device: torch.device | None = None

    def _move(self, device: torch.device) -> None:
        if self._device != device:
            self.encoder = self.encoder.to(device)
            self.values = self.values.to(device)
            self.W_dec = self.W_dec.to(device)
            self.add = None if self.add is None else self.add.to(device)
            self._device = device

    def __call__(self, ctx: Any, h: torch.Tensor) -> torch.Tensor | None:
        # vllm-lens skips a layer's hooks for every request of the batch when one raises, so a
        # failure is recorded for the client to raise instead.
        try:
            self._move(h.device)
            f = self.encoder(h.float())
            out = h + ((self.values - f) @ self.W_dec).to(h.dtype)
            if self.add is not None:
                out = out + self.add.to(h.dtype)
            ctx.saved["positions"] = ctx.saved.get("positions", 0) + int(h.shape[0])
            return out
        except Exception as err:  # noqa: BLE001 - reported to the client through hook_results
            ctx.saved["error"] = f"{type(err).__name__}: {err}"
            return None
