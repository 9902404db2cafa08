"""The `steered` provider inside real Inspect evals: batching, per-request steering, one load."""

from __future__ import annotations

import json

from inspect_ai import Task
from inspect_ai import eval as inspect_eval
from inspect_ai.dataset import Sample
from inspect_ai.solver import Generate, TaskState, solver

from esr_eval.steering.backends.hf import HFEngine
from esr_eval.steering.engine import GenerationRequest
from esr_eval.steering.intervention import Intervention, steering_to_extra_body
from esr_eval.steering.load import load_engine

PROMPTS = ["Explain how to brew coffee.", "How do you tie a tie?", "Bread?", "Tell me about chess."]


@solver
def steer_from_metadata(dictionary_id: str):
    async def solve(state: TaskState, generate: Generate) -> TaskState:
        md = state.metadata
        ivs = [Intervention(md["latent"], md["value"], md["mode"])] if md["latent"] is not None else []
        return await generate(state, extra_body=steering_to_extra_body(ivs, dictionary_id), max_tokens=10, temperature=0.0, seed=md["seed"])

    return solve


def test_concurrent_samples_batch_and_keep_their_own_steering(tiny_model_dir, tiny_sae_dir, tmp_path, monkeypatch):
    labels = tmp_path / "labels.json"  # a fresh engine key: this test counts the loads
    labels.write_text(json.dumps({str(k): f"latent {k}" for k in range(64)}))
    loads, batches = [], []
    real_load, real_generate, real_decode = HFEngine.load, HFEngine.generate, HFEngine._decode
    monkeypatch.setattr(HFEngine, "load", classmethod(lambda cls, *a, **k: loads.append(a) or real_load.__func__(cls, *a, **k)))
    monkeypatch.setattr(HFEngine, "_decode", lambda self, batch: batches.append(len(batch)) or real_decode(self, batch))

    specs = [(None, 0.0, "add"), (3, 30.0, "add"), (9, 0.0, "clamp"), (5, -20.0, "add")] * 2
    samples = [
        Sample(input=PROMPTS[i % 4], id=i, metadata={"latent": k, "value": v, "mode": m, "seed": i})
        for i, (k, v, m) in enumerate(specs)
    ]
    lm = load_engine(str(tiny_model_dir), str(tiny_sae_dir), labels=str(labels), dtype="float32")
    log = inspect_eval(
        Task(dataset=samples, solver=steer_from_metadata(lm.dictionary_id)),
        model=f"steered/{tiny_model_dir}",
        model_args={"dictionary": str(tiny_sae_dir), "labels": str(labels), "dtype": "float32"},
        max_connections=8,
        log_dir=str(tmp_path / "logs"),
        display="none",
    )[0]
    assert log.status == "success", log.error
    assert len(loads) == 1  # the provider reuses the engine loaded above
    assert max(batches) > 1  # concurrent samples shared decode steps
    for sample in sorted(log.samples, key=lambda s: s.id):
        k, v, m = specs[sample.id]
        alone = real_generate(lm, [GenerationRequest([{"role": "user", "content": sample.input}], [Intervention(k, v, m)] if k is not None else [], 10, 0.0, seed=sample.id)])[0]
        assert sample.output.completion == alone.text
        assert sample.output.usage.output_tokens == alone.completion_tokens


def test_unknown_dictionary_in_request_fails_the_sample(tiny_model_dir, tiny_sae_dir, tmp_path):
    log = inspect_eval(
        Task(dataset=[Sample(input="Bread?", metadata={"latent": 1, "value": 1.0, "mode": "add", "seed": 0})], solver=steer_from_metadata("other-sae@2")),
        model=f"steered/{tiny_model_dir}",
        model_args={"dictionary": str(tiny_sae_dir)},
        log_dir=str(tmp_path),
        display="none",
    )[0]
    assert log.status == "error"
    assert "other-sae@2" in str(log.error)


def test_model_key_follows_the_weights_of_a_local_model(tiny_model_dir, tmp_path):
    import shutil

    from esr_eval.provider import SteeredModelAPI

    copy = tmp_path / "tuned"
    shutil.copytree(tiny_model_dir, copy)
    key = SteeredModelAPI(str(copy)).model_key
    assert key.startswith("tuned#") and SteeredModelAPI(str(copy)).model_key == key
    weights = next(copy.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # retrained into the same folder: the thresholds cache must miss
    weights.write_bytes(bytes(data))
    assert SteeredModelAPI(str(copy)).model_key != key
    assert SteeredModelAPI("smollm2-135m").model_key == "smollm2-135m"
    assert SteeredModelAPI("org/hub-model").model_key == "org/hub-model"


def test_mixed_settings_in_one_batch_equal_each_request_alone(tiny_model_dir, tiny_sae_dir, tmp_path):
    """Budgets, temperatures, top_p < 1 and seeds differ per sample; batched through the provider,
    every answer equals the same request generated alone."""
    settings = [(4, 0.0, 1.0), (11, 0.6, 1.0), (7, 1.0, 0.8), (2, 0.9, 0.5), (9, 0.0, 0.9), (5, 1.3, 1.0)] * 2

    @solver
    def mixed():
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            budget, temperature, top_p = settings[state.sample_id]
            body = steering_to_extra_body([Intervention(3, 4.0)] if state.sample_id % 2 else [])
            return await generate(state, extra_body=body, max_tokens=budget, temperature=temperature, top_p=top_p, seed=100 + state.sample_id)

        return solve

    samples = [Sample(input=PROMPTS[i % 4], id=i) for i in range(len(settings))]
    log = inspect_eval(
        Task(dataset=samples, solver=mixed()),
        model=f"steered/{tiny_model_dir}",
        model_args={"dictionary": str(tiny_sae_dir), "dtype": "float32"},  # bf16 logits depend on the batch a row shares
        max_connections=len(settings),
        log_dir=str(tmp_path / "logs"),
        display="none",
    )[0]
    assert log.status == "success", log.error
    lm = load_engine(str(tiny_model_dir), str(tiny_sae_dir), dtype="float32")
    for sample in log.samples:
        budget, temperature, top_p = settings[sample.id]
        steering = [Intervention(3, 4.0)] if sample.id % 2 else []
        request = GenerationRequest([{"role": "user", "content": sample.input}], steering, budget, temperature, top_p, seed=100 + sample.id)
        [alone] = lm.generate([request])
        assert sample.output.completion == alone.text, sample.id
        assert sample.output.usage.output_tokens == alone.completion_tokens <= budget


def test_runs_with_different_batch_sizes_keep_their_own(tiny_model_dir, tiny_sae_dir, monkeypatch):
    """Two providers in one process with different -M max_batch_size: each engine decodes at most
    its own number of rows (one shared engine would take the last setting for both)."""
    from esr_eval.provider import SteeredModelAPI

    batches: list[int] = []
    real_decode = HFEngine._decode
    monkeypatch.setattr(HFEngine, "_decode", lambda self, batch: batches.append(len(batch)) or real_decode(self, batch))
    args = {"dictionary": str(tiny_sae_dir), "dtype": "float32"}
    small = SteeredModelAPI(str(tiny_model_dir), **args, max_batch_size=2).engine
    large = SteeredModelAPI(str(tiny_model_dir), **args, max_batch_size=6).engine
    assert (small.max_batch_size, large.max_batch_size) == (2, 6)
    assert SteeredModelAPI(str(tiny_model_dir), **args, max_batch_size=2).engine is small  # one load per setting
    requests = [GenerationRequest([{"role": "user", "content": p}], [], 6, 0.0, seed=i) for i, p in enumerate(PROMPTS * 2)]
    for engine, most in ((small, 2), (large, 6)):
        batches.clear()
        futures = [engine.submit(r) for r in requests]
        assert all(f.result(timeout=120).completion_tokens <= 6 for f in futures)
        assert max(batches) <= most
    assert max(batches) > 2  # the large engine did batch past the small one's limit
