"""A KV cache that grows in place: Hugging Face's `DynamicLayer` concatenates each step's keys and
values onto a new tensor, copying the whole cache every decode step (O(T^2) bytes over an answer).
`GrowingLayer` writes them into spare columns of a buffer and hands attention a view, so a step
copies only its own column. The values are the same, so answers do not change
(`benchmarks/kv_cache.py` measures both caches and compares their answers).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

SPARE_COLUMNS = 128  # room added when a buffer fills: one copy every 128 decode steps
IN_PLACE_MIN_ROWS = 2  # one row concatenates as `DynamicLayer` does: in place it measured ~10% slower (benchmarks/kv_cache.py)


class GrowingLayer(DynamicLayer):
    """`keys`/`values` are views of columns `start:end` of larger buffers. Code that replaces them
    (`crop`, `reset`, a merge of rows prefilled apart, a single row's concatenation) breaks the
    link, and the next `update` of two or more rows copies the new tensors into fresh buffers."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._key_view: torch.Tensor | None = None
        self._key_buffer = self._value_buffer = key_states.new_empty(0)
        self._start = self._end = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if key_states.shape[0] < IN_PLACE_MIN_ROWS:
            return super().update(key_states, value_states, *args, **kwargs)
        keys, values = self.tensors()
        new = key_states.shape[-2]
        if keys is not self._key_view or self._key_buffer.shape[-2] < self._end + new:
            length = keys.shape[-2] if keys.numel() else 0
            self._key_buffer = self._grown(keys, key_states, length + new + SPARE_COLUMNS)
            self._value_buffer = self._grown(values, value_states, length + new + SPARE_COLUMNS)
            self._start, self._end = 0, length
        self._key_buffer[..., self._end : self._end + new, :] = key_states
        self._value_buffer[..., self._end : self._end + new, :] = value_states
        self._end += new
        self._set_views()
        return self.tensors()

    def keep_rows(self, rows: torch.Tensor, drop_columns: int) -> None:
        """Keep batch `rows` and drop the `drop_columns` leftmost columns, copying the buffers once
        with their spare columns (`DynamicLayer` would copy, then `update` copy again)."""
        keys, values = self.tensors()
        if keys is not self._key_view:
            self._key_buffer, self._value_buffer = keys, values
            self._start, self._end = 0, keys.shape[-2]
        index = rows.to(self._key_buffer.device)
        self._key_buffer, self._value_buffer = self._key_buffer[index], self._value_buffer[index]
        self._start = min(self._start + drop_columns, self._end)
        self._set_views()

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values attention reads (set by the first `update`)."""
        assert self.keys is not None and self.values is not None, "update() initialises the layer"
        return self.keys, self.values

    def _set_views(self) -> None:
        self.keys = self._key_view = self._key_buffer[..., self._start : self._end, :]
        self.values = self._value_buffer[..., self._start : self._end, :]

    @staticmethod
    def _grown(old: torch.Tensor, like: torch.Tensor, columns: int) -> torch.Tensor:
        buffer = like.new_empty(*like.shape[:-2], columns, like.shape[-1])
        if old.numel():
            buffer[..., : old.shape[-2], :] = old
        return buffer


def growing_cache(config) -> DynamicCache:
    """The cache `DynamicCache(config=...)` builds, with its full-attention layers growing in place
    (sliding-window layers keep only their window and stay as they are)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
