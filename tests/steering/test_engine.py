"""The engine interface on the HF backend: continuous batching, streamed requests, sharded
models (accelerate device_map), the sampler, and engine selection."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from esr_eval.steering.backends.hf import HFEngine
from esr_eval.steering.backends.hf_batch import sample_tokens
from esr_eval.steering.engine import GenerationRequest
from esr_eval.steering.hooks import BatchSteering
from esr_eval.steering.intervention import Intervention

PROMPTS = ["Explain how to brew coffee.", "How do you tie a tie?", "Bread?", "Tell me about chess and the ocean please.",
           "Why is the sky blue?", "Photosynthesis"]  # fmt: skip
STEERING = [(), (Intervention(3, 6.0),), (Intervention(9, 0.0, "clamp"), Intervention(2, -4.0)), (Intervention(11, 5.0, "clamp"),),
            (Intervention(5, 12.0), Intervention(7, 2.0, "clamp"))]  # fmt: skip


def mixed_requests(n: int = 24, longest: int = 29) -> list[GenerationRequest]:
    """Mixed budgets, steering, temperatures (greedy and sampled), top_p < 1, seeds."""
    return [
        GenerationRequest(
            [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            STEERING[i % len(STEERING)],
            max_new_tokens=min(longest, [3, 17, 8, 29, 1, 12][i % 6]),
            temperature=[0.0, 0.7, 1.0][i % 3],
            top_p=[1.0, 1.0, 0.8, 0.5][i % 4],
            repetition_penalty=[1.0, 1.1][i % 2],
            seed=1000 + i,
        )
        for i in range(n)
    ]


def test_continuous_batch_of_8_equals_each_row_alone(tiny_lm, monkeypatch):
    """24 requests through 8 slots: finished rows leave and waiting ones join between decode
    steps, and every row makes exactly the tokens it makes alone."""
    requests = mixed_requests()
    sizes, joins = [], []
    real_decode, real_prefill = HFEngine._decode, HFEngine._prefill
    monkeypatch.setattr(HFEngine, "_decode", lambda self, batch: sizes.append(len(batch)) or real_decode(self, batch))
    monkeypatch.setattr(HFEngine, "_prefill", lambda self, rows: joins.append(len(rows)) or real_prefill(self, rows))
    batched = tiny_lm.generate(requests, max_batch_size=8)
    assert max(sizes) == 8 and len(joins) > 3  # rows joined a running batch several times
    monkeypatch.undo()
    alone = [tiny_lm.generate([r])[0] for r in requests]
    assert [b.token_ids for b in batched] == [a.token_ids for a in alone]
    assert [b.text for b in batched] == [a.text for a in alone]
    for b, r in zip(batched, requests):  # each row ends at its own budget, or at EOS before it
        assert (b.stop_reason, len(b.token_ids)) == ("max_tokens", r.max_new_tokens) or (b.stop_reason == "stop" and len(b.token_ids) < r.max_new_tokens)
    assert sum(b.stop_reason == "max_tokens" for b in batched) >= 20


def test_continuous_batching_with_sliding_window_layers():
    """A Gemma 3 layout (sliding-window layers of 6 tokens between full ones): rows that join a
    batch whose windows have already rolled still make their tokens alone."""
    from helpers import TINY_HIDDEN, tiny_tokenizer
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from esr_eval.steering.dictionary import DirectionSet

    tokenizer = tiny_tokenizer()
    tokenizer.padding_side = "left"
    config = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=TINY_HIDDEN, intermediate_size=64, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=6, max_position_embeddings=512,
                              layer_types=["sliding_attention", "full_attention"] * 2, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)  # fmt: skip
    torch.manual_seed(0)
    lm = HFEngine(Gemma3ForCausalLM(config).eval(), tokenizer, DirectionSet(torch.randn(16, TINY_HIDDEN), "d", 2, {}), layer=2)
    requests = mixed_requests(8)
    batched = lm.generate(requests, max_batch_size=4)
    assert [b.token_ids for b in batched] == [lm.generate([r])[0].token_ids for r in requests]


def test_streamed_requests_join_the_running_batch(tiny_lm, monkeypatch):
    """Requests submitted while others decode join between steps; each equals its row alone."""
    requests = mixed_requests(12)
    joined_running = []
    real_prefill = HFEngine._prefill

    def prefill(self, rows):
        joined_running.append(self._running)
        return real_prefill(self, rows)

    real_step = HFEngine._step

    def step(self, batch, joining):
        self._running = batch is not None and len(batch) > 0
        return real_step(self, batch, joining)

    monkeypatch.setattr(HFEngine, "_prefill", prefill)
    monkeypatch.setattr(HFEngine, "_step", step)
    tiny_lm.max_batch_size = 8
    futures = []
    for i, r in enumerate(requests):
        futures.append(tiny_lm.submit(r))
        if i % 4 == 3:
            time.sleep(0.05)  # later requests arrive while the first ones decode
    streamed = [f.result(timeout=120) for f in futures]
    assert any(joined_running)
    monkeypatch.undo()
    assert [s.token_ids for s in streamed] == [tiny_lm.generate([r])[0].token_ids for r in requests]


def test_bad_request_fails_alone_in_a_stream(tiny_lm):
    good = GenerationRequest([{"role": "user", "content": "Bread?"}], (), max_new_tokens=4, temperature=0)
    bad = GenerationRequest([{"role": "user", "content": "Bread?"}], (Intervention(64, 1.0),), max_new_tokens=4)
    f_good, f_bad = tiny_lm.submit(good), tiny_lm.submit(bad)
    with pytest.raises(ValueError, match="outside dictionary"):
        f_bad.result(timeout=60)
    assert f_good.result(timeout=60).token_ids == tiny_lm.generate([good])[0].token_ids


def test_read_out_waits_for_a_decode_step(tiny_lm, monkeypatch):
    """A read-out in another thread never runs inside a decode step (the hooks hold that step's
    steering), and sees none of the running batch's steering."""
    events = []
    real_decode, real_forward = HFEngine._decode, HFEngine._forward

    def decode(self, batch):
        with self.hooks._lock:  # the whole step, as `_decode` holds the hooks for its forward
            events.append("step-start")
            real_decode(self, batch)
            time.sleep(0.005)
            events.append("step-end")

    def forward(self, *args, **kwargs):
        reading = threading.current_thread() is threading.main_thread()
        events.append("read-start") if reading else None
        out = real_forward(self, *args, **kwargs)
        events.append("read-end") if reading else None
        return out

    monkeypatch.setattr(HFEngine, "_decode", decode)
    monkeypatch.setattr(HFEngine, "_forward", forward)
    prompt = [[{"role": "user", "content": "Bread?"}]]
    plain = tiny_lm.prompt_residuals(prompt)[0]
    steered = [GenerationRequest(prompt[0], (Intervention(3, 50.0),), max_new_tokens=40, temperature=0)]
    worker = threading.Thread(target=lambda: tiny_lm.generate(steered))
    worker.start()
    while "step-start" not in events:
        time.sleep(0.001)
    during = [tiny_lm.prompt_residuals(prompt)[0] for _ in range(3)]
    worker.join()
    for d in during:
        torch.testing.assert_close(d, plain)  # the steering of the running batch did not leak in
    inside = False
    for e in events:
        inside = {"step-start": True, "step-end": False}.get(e, inside)
        assert not (inside and e == "read-start")
    assert events.count("read-start") == 4 and events.count("step-start") > 3


def test_sampler_draws_from_the_right_distribution_without_sorting_at_top_p_1(monkeypatch):
    rows = 16
    logits = torch.log(torch.tensor([[0.1, 0.6, 0.3, 1e-9]] * rows))
    seen = torch.zeros(rows, 4, dtype=torch.bool)
    ones = torch.ones(rows)
    sorts = []
    real_sort = torch.Tensor.sort
    monkeypatch.setattr(torch.Tensor, "sort", lambda self, *a, **k: sorts.append(1) or real_sort(self, *a, **k))
    gens = [torch.Generator().manual_seed(i) for i in range(rows)]
    counts = torch.zeros(4)
    for _ in range(400):
        counts += torch.bincount(sample_tokens(logits, seen, ones, ones, ones, gens), minlength=4)
    assert sorts == []
    torch.testing.assert_close(counts / counts.sum(), torch.tensor([0.1, 0.6, 0.3, 0.0]), atol=0.015, rtol=0)
    # top_p = 0.5 keeps only the most likely token; top_p = 0.7 keeps the two most likely
    top_p = torch.tensor([0.5, 0.7] * (rows // 2))
    nucleus = torch.stack([sample_tokens(logits, seen, ones, ones, top_p, gens) for _ in range(50)])
    assert set(nucleus[:, 0::2].flatten().tolist()) == {1} and set(nucleus[:, 1::2].flatten().tolist()) == {1, 2}
    assert sorts  # only rows with top_p < 1 sort
    greedy = sample_tokens(logits, seen, ones, torch.zeros(rows), ones, gens)
    assert greedy.tolist() == [1] * rows


# ---------------------------------------------------------------- sharded models


def _residual_delta(lm: HFEngine, interventions) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([lm.prompt_ids([{"role": "user", "content": PROMPTS[0]}])])
    out = []
    for ivs in ((), interventions):
        steering = BatchSteering.build([ivs], lm.dictionary, lm._dtype())
        with torch.inference_mode(), lm.hooks.active(steering, record=True) as record:
            lm.model(input_ids=ids.to(lm.input_device))
        out.append(record[0][0].float().cpu())
    return out[0], out[1]


def _split_map(n_layers: int = 4) -> dict[str, str]:
    """Layers 0-1 in memory, 2-3 (the hooked layer among them) offloaded to disk by accelerate."""
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "cpu" if i < n_layers // 2 else "disk" for i in range(n_layers)})
    return device_map


@pytest.fixture(scope="module")
def sharded_pair(tiny_model_dir, tiny_sae_dir, tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("ESR_EVAL_CACHE", str(tmp_path_factory.mktemp("cache")))
    plain = HFEngine.load(str(tiny_model_dir), dictionary=str(tiny_sae_dir), dtype="float32")
    by_map = HFEngine.load(str(tiny_model_dir), dictionary=str(tiny_sae_dir), dtype="float32", device_map=_split_map())
    by_memory = HFEngine.load(str(tiny_model_dir), dictionary=str(tiny_sae_dir), dtype="float32", max_memory={"cpu": 60_000})
    return plain, by_map, by_memory


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_sharded_model_steers_exactly_like_the_unsharded_one(sharded_pair):
    plain, by_map, by_memory = sharded_pair
    assert set(by_map.model.hf_device_map.values()) == {"cpu", "disk"}
    assert "disk" in set(by_memory.model.hf_device_map.values())  # max_memory forced a split
    requests = mixed_requests(6, longest=10)
    expected = plain.generate(requests, max_batch_size=3)
    ivs = (Intervention(5, 3.5), Intervention(9, 0.0, "clamp"))
    base, steered = _residual_delta(plain, ivs)
    for sharded in (by_map, by_memory):
        assert [r.token_ids for r in sharded.generate(requests, max_batch_size=3)] == [r.token_ids for r in expected]
        s_base, s_steered = _residual_delta(sharded, ivs)
        torch.testing.assert_close(s_base, base, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(s_steered - s_base, steered - base, atol=1e-5, rtol=1e-5)
        a = plain.read_latents([([{"role": "user", "content": "Bread?"}], "Flour and water.")], [5, 9], [ivs])[0]
        b = sharded.read_latents([([{"role": "user", "content": "Bread?"}], "Flour and water.")], [5, 9], [ivs])[0]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_model_split_over_gpu_and_cpu_steers_like_one_device(tiny_model_dir, tiny_sae_dir):
    """The hooked layer on the CPU, the layers before it on the GPU (and the other way round)."""
    plain = HFEngine.load(str(tiny_model_dir), dictionary=str(tiny_sae_dir), dtype="float32")
    expected = [r.token_ids for r in plain.generate(mixed_requests(10), max_batch_size=4)]
    for first, second in (("cuda:0", "cpu"), ("cpu", "cuda:0")):
        device_map = {"model.embed_tokens": first, "model.rotary_emb": first, "model.layers.0": first, "model.layers.1": first,
                      "model.layers.2": second, "model.layers.3": second, "model.norm": second, "lm_head": second}  # fmt: skip
        split = HFEngine.load(str(tiny_model_dir), dictionary=str(tiny_sae_dir), dtype="float32", device_map=device_map)
        assert split.layer_device.type == torch.device(second).type
        got = [r.token_ids for r in split.generate(mixed_requests(10), max_batch_size=4)]
        assert sum(g == e for g, e in zip(got, expected)) >= 8  # GPU kernels round differently


def test_70b_preset_loads_sharded_in_bf16(tiny_model_dir, tiny_sae_dir, monkeypatch, tmp_path):
    """The llama-3.3-70b-instruct preset's path (device_map=auto, bf16, a sae-lens release) on a
    tiny random Llama, split over memory and disk by max_memory."""
    from sae_lens import SAE

    from esr_eval.steering import presets
    from esr_eval.steering.load import load_engine

    monkeypatch.setenv("ESR_EVAL_CACHE", str(tmp_path))
    real = presets.PRESETS["llama-3.3-70b-instruct"]
    assert (real.device_map, real.dtype, real.memory_gb) == ("auto", "bfloat16", 150)
    monkeypatch.setitem(presets.PRESETS, real.name, presets.Preset(**{**real.__dict__, "model": str(tiny_model_dir)}))
    monkeypatch.setattr(SAE, "from_pretrained", staticmethod(lambda release, sae_id, device="cpu", **_: SAE.load_from_disk(str(tiny_sae_dir), device=device)))
    lm = load_engine("llama-3.3-70b-instruct", max_memory={"cpu": 60_000})
    assert lm.dtype == "bfloat16" and "disk" in set(lm.model.hf_device_map.values())
    unsharded = HFEngine.load(str(tiny_model_dir), dictionary=str(tiny_sae_dir), dtype="bfloat16")
    requests = [GenerationRequest([{"role": "user", "content": p}], (Intervention(3, 8.0),), max_new_tokens=6, temperature=0) for p in PROMPTS[:3]]
    assert [r.token_ids for r in lm.generate(requests)] == [r.token_ids for r in unsharded.generate(requests)]


# ---------------------------------------------------------------- engine selection


def test_model_args_read_device_map_and_max_memory():
    from esr_eval.config import ModelArgs
    from esr_eval.errors import UsageError

    a = ModelArgs.parse({"device_map": "auto", "max_memory": "0=70GiB,1=70GiB,cpu=200GiB"})
    assert a.backend_args() == {"device_map": "auto", "max_memory": {0: "70GiB", 1: "70GiB", "cpu": "200GiB"}}
    assert ModelArgs.parse({"max_memory": {"cpu": 1000}}).max_memory == {"cpu": 1000}
    assert ModelArgs.parse({}).backend_args() == {}
    with pytest.raises(UsageError, match="DEVICE=SIZE"):
        ModelArgs.parse({"max_memory": "70GiB"})
    with pytest.raises(UsageError, match="dtype='fp8' is unknown"):
        ModelArgs.parse({"dtype": "fp8"})
    with pytest.raises(UsageError, match="with -M engine=vllm use tensor_parallel_size"):
        ModelArgs.parse({"engine": "vllm", "device_map": "auto"})
    vllm = ModelArgs.parse({"engine": "vllm", "tensor_parallel_size": "2", "max_batch_size": "8"})
    assert vllm.backend_args("http://host:8000") == {
        "tensor_parallel_size": 2, "pipeline_parallel_size": 1, "max_model_len": None, "max_num_seqs": 8, "base_url": "http://host:8000"
    }


def test_default_dtype_follows_the_hardware(monkeypatch):
    """bf16 where the hardware computes in it; float32 on a CPU that only emulates bf16."""
    from esr_eval.steering import models

    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert models.resolve_dtype(None, "cpu") == torch.float32
    assert models.resolve_dtype("bfloat16", "cpu") == torch.bfloat16  # asked for: kept
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert models.resolve_dtype(None, "cpu") == torch.bfloat16
    if torch.cuda.is_available():
        assert models.resolve_dtype(None, "cuda:0") == (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16)
