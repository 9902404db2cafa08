"""The in-place KV cache: the same keys and values as Hugging Face's, without a copy per step."""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from esr_eval.steering.backends import hf_cache
from esr_eval.steering.backends.hf_batch import merge_caches, select_cache_rows
from esr_eval.steering.backends.hf_cache import GrowingLayer
from esr_eval.steering.engine import GenerationRequest
from esr_eval.steering.intervention import Intervention


def one_layer_caches() -> tuple[DynamicCache, DynamicCache]:
    """(DynamicLayer's, GrowingLayer's) one-layer caches."""
    plain, growing = DynamicCache(), DynamicCache()
    plain.layers, growing.layers = [DynamicLayer()], [GrowingLayer()]
    return plain, growing


def join_three_rows(plain: DynamicCache, growing: DynamicCache, columns: int) -> None:
    """Merge the same 3 rows, prefilled apart with `columns` columns, into both caches."""
    extra = (torch.randn(3, 2, columns, 8), torch.randn(3, 2, columns, 8))
    for cache in (plain, growing):
        joining = DynamicCache()
        joining.layers = [DynamicLayer()]
        joining.layers[0].update(*extra)
        merge_caches(cache, joining, cache.layers[0].keys.shape[-2])


def test_growing_layer_holds_what_dynamic_layer_holds_through_leaves_and_joins():
    """300 decode steps after a 5-column prefill, rows leaving at step 150 and joining at 200: the
    layer returns exactly DynamicLayer's tensors at every step, and writes in place between
    regrowths (one every SPARE_COLUMNS steps, plus one after each change of rows)."""
    torch.manual_seed(0)
    plain, growing = one_layer_caches()
    k, v = torch.randn(4, 2, 5, 8), torch.randn(4, 2, 5, 8)
    for cache in (plain, growing):
        cache.layers[0].update(k, v)
    regrown, last = 0, None
    for step in range(300):
        if step == 150:
            for cache in (plain, growing):
                select_cache_rows(cache, torch.tensor([0, 2]), 3, cache.layers[0].keys.shape[-2] - 3)
        if step == 200:
            join_three_rows(plain, growing, columns=7)
        k, v = torch.randn(len(plain.layers[0].keys), 2, 1, 8), torch.randn(len(plain.layers[0].keys), 2, 1, 8)
        want = plain.layers[0].update(k, v)
        got = growing.layers[0].update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        pointer = growing.layers[0]._key_buffer.data_ptr()
        regrown, last = regrown + (pointer != last), pointer
    assert got[0].shape == (5, 2, 302, 8)
    # new buffers at step 0 (the prefill's), 128 (full), 150 (rows left, one copy) and 200 (rows joined) only
    assert regrown <= 4


def test_long_answers_equal_those_of_the_concatenating_cache(tiny_lm, monkeypatch):
    """Greedy and sampled rows of 200 tokens (past a buffer's spare columns), 5 rows through 3
    slots: the engine makes the same tokens with Hugging Face's own DynamicCache."""
    prompts = ["Explain how to brew coffee.", "How do you tie a tie?", "Bread?", "Why is the sky blue?", "Photosynthesis"]
    steering = [(), (Intervention(3, 6.0),), (Intervention(9, 0.0, "clamp"),), (Intervention(5, 12.0),), ()]
    requests = [GenerationRequest([{"role": "user", "content": p}], s, max_new_tokens=200, temperature=[0.0, 0.8][i % 2],
                                  repetition_penalty=1.1, seed=i) for i, (p, s) in enumerate(zip(prompts, steering))]  # fmt: skip
    growing = tiny_lm.generate(requests, max_batch_size=3)
    monkeypatch.setattr(hf_cache, "growing_cache", lambda config: DynamicCache(config=config))
    plain = tiny_lm.generate(requests, max_batch_size=3)
    assert [g.token_ids for g in growing] == [p.token_ids for p in plain]
    assert max(len(g.token_ids) for g in growing) > hf_cache.SPARE_COLUMNS


def test_a_single_row_concatenates_and_rows_joining_it_grow_in_place_again():
    """4 rows, then one (concatenated as DynamicLayer does), then 4 again after a join: the same
    tensors as DynamicLayer's at every step, and one buffer for the 100 steps after the join."""
    torch.manual_seed(1)
    plain, growing = one_layer_caches()
    for cache in (plain, growing):
        cache.layers[0].update(torch.ones(4, 2, 5, 8), torch.ones(4, 2, 5, 8))
    buffers = []
    for step in range(200):
        if step == 50:
            for cache in (plain, growing):
                select_cache_rows(cache, torch.tensor([1]), 0, cache.layers[0].keys.shape[-2])
        if step == 100:
            join_three_rows(plain, growing, columns=9)
        rows = len(plain.layers[0].keys)
        k, v = torch.randn(rows, 2, 1, 8), torch.randn(rows, 2, 1, 8)
        want, got = plain.layers[0].update(k, v), growing.layers[0].update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        keys = growing.layers[0].keys
        buffers.append(None if keys._base is None else keys._base.data_ptr())  # a view's buffer
    assert got[0].shape == (4, 2, 205, 8)
    assert buffers[:50].count(None) == 0 and len(set(buffers[:50])) == 1  # 4 rows: views of one buffer
    assert buffers[50:100] == [None] * 50  # one row: whole tensors, as DynamicLayer's
    assert None not in buffers[100:] and len(set(buffers[100:])) == 1  # after the join: one buffer again
