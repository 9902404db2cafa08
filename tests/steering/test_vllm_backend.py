"""The vLLM backend: bad input refused before any load, the clamp hook's arithmetic against the HF
backend's, and (marked `vllm`, skipped without vllm) both backends agreeing on the embedded model,
in process and against a `vllm serve` endpoint."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY_HIDDEN, write_random_sae

from esr_eval.errors import UsageError
from esr_eval.steering.backends import vllm as vllm_backend
from esr_eval.steering.backends.vllm_hooks import ClampHook, LatentEncoder
from esr_eval.steering.dictionary import DirectionSet, SAEDictionary, load_dictionary
from esr_eval.steering.engine import GenerationRequest
from esr_eval.steering.hooks import BatchSteering
from esr_eval.steering.intervention import Intervention

PROMPT = [{"role": "user", "content": "Explain how a bicycle works."}]
OTHER = [{"role": "user", "content": "How do you bake bread?"}]


# ---------------------------------------------------------------- before any load (default suite)
def steered_model(**model_args):
    from inspect_ai.model import get_model

    return get_model("steered/smollm2-135m", memoize=False, **model_args)


def test_vllm_engine_without_vllm_names_the_pip_command(monkeypatch):
    from esr_eval.steering import load

    monkeypatch.setattr(vllm_backend, "installed", lambda module: False)
    before = dict(load._engines)
    with pytest.raises(UsageError, match=r'pip install "esr-eval\[vllm\]"') as err:
        steered_model(engine="vllm")
    assert "vllm and vllm-lens" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(UsageError, match="vllm-lens, which is not installed"):
        steered_model(engine="vllm", base_url="http://127.0.0.1:9")  # a server needs only the plugin
    with pytest.raises(UsageError, match=r'pip install "esr-eval\[vllm\]"'):
        load.load_engine("smollm2-135m", engine="vllm")  # the library path checks too
    assert load._engines == before  # refused before anything loaded


def test_tensor_parallel_larger_than_the_devices_is_refused(monkeypatch):
    n, kind = vllm_backend.local_devices()
    kind = re.escape(kind)
    monkeypatch.setattr(vllm_backend, "installed", lambda module: True)  # the size check comes first anyway
    with pytest.raises(UsageError, match=rf"needs {n + 1} devices but this machine has {n} {kind}"):
        steered_model(engine="vllm", tensor_parallel_size=n + 1)
    with pytest.raises(UsageError, match=rf"needs {2 * n} devices"):
        steered_model(engine="vllm", pipeline_parallel_size=2 * n)
    with pytest.raises(UsageError, match="settings of the vLLM server"):
        steered_model(engine="vllm", tensor_parallel_size=2, base_url="http://127.0.0.1:9")


def test_vllm_settings_need_the_vllm_engine():
    with pytest.raises(UsageError, match="add -M engine=vllm"):
        steered_model(tensor_parallel_size=2)
    with pytest.raises(UsageError, match="engine='vlm' is unknown: use one of hf, vllm"):
        steered_model(engine="vlm")
    from esr_eval.steering import load

    with pytest.raises(UsageError, match=r"^-M engine='tgi' is unknown: use one of hf, vllm$"):
        load.load_engine("smollm2-135m", engine="tgi")
    with pytest.raises(UsageError, match="--model-base-url names a vLLM server"):
        steered_model(base_url="http://127.0.0.1:9")


# ---------------------------------------------------------------- the clamp hook, without vLLM
class Ctx:
    def __init__(self) -> None:
        self.saved: dict = {}


KINDS = ["standard", "topk", "topk-unfolded", "jumprelu", "directions"]


def jumprelu_sae(folder: Path) -> Path:
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(3)
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=TINY_HIDDEN, d_sae=48, metadata=SAEMetadata(hook_name="model.layers.2")))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        sae.threshold.uniform_(0.0, 0.4)
    sae.save_model(folder)
    return folder


def topk_sae(folder: Path | None):
    """A TopK SAE like the embedded one (decoder norms rescale the activations); saved and
    loaded (norms folded) when `folder` is given, else kept with its uneven decoder norms."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(2)
    cfg = TopKSAEConfig(d_in=TINY_HIDDEN, d_sae=64, k=8, rescale_acts_by_decoder_norm=True, metadata=SAEMetadata(hook_name="model.layers.2"))
    sae = TopKSAE(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
    if folder is None:
        return SAEDictionary(sae, "topk-unfolded", 2, {})
    sae.save_model(folder)
    return load_dictionary(str(folder))


@pytest.fixture(scope="module")
def dictionaries(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicts")
    torch.manual_seed(1)
    return {
        "standard": load_dictionary(str(write_random_sae(root / "standard", seed=1))),
        "topk": topk_sae(root / "topk"),
        "topk-unfolded": topk_sae(None),
        "jumprelu": load_dictionary(str(jumprelu_sae(root / "jumprelu"))),
        "directions": DirectionSet(torch.randn(12, TINY_HIDDEN), "dirs", 2, {}),
    }


@pytest.mark.parametrize("kind", KINDS)
def test_portable_encoder_equals_the_dictionary_encode(dictionaries, kind):
    d = dictionaries[kind]
    latents = [0, 3, 5, d.d_sae - 1]
    encoder = vllm_backend.portable_encoder(d, latents)
    assert isinstance(encoder, LatentEncoder)
    h = torch.randn(40, TINY_HIDDEN) * 3
    expected = d.encode(h)[:, latents]
    assert expected.abs().sum() > 0  # some of these latents are active
    torch.testing.assert_close(encoder(h), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_clamp_hook_equals_the_hf_backend_clamp_then_add(dictionaries, kind):
    pytest.importorskip("vllm_lens", reason='the hook objects are vllm-lens classes: pip install "esr-eval[vllm]"')
    d = dictionaries[kind]
    ivs = [Intervention(3, 2.5, "clamp"), Intervention(5, 0.0, "clamp"), Intervention(1, 4.0), Intervention(3, 1.5, "clamp")]
    h = torch.randn(1, 9, TINY_HIDDEN) * 3
    expected = BatchSteering.build([ivs], d, torch.float32).apply(h)[0]
    vectors, hooks = vllm_backend.steering_objects(ivs, d, layer=2, dtype=torch.float32)
    assert vectors == [] and len(hooks) == 1 and hooks[0].layer_indices == [2]
    ctx = Ctx()
    got = hooks[0].fn(ctx, h[0])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert ctx.saved == {"positions": 9}


def test_adds_alone_ride_as_one_steering_vector(dictionaries):
    pytest.importorskip("vllm_lens", reason='the steering vectors are vllm-lens classes: pip install "esr-eval[vllm]"')
    d = dictionaries["standard"]
    vectors, hooks = vllm_backend.steering_objects([Intervention(1, 2.0), Intervention(7, -1.0)], d, 2, torch.bfloat16)
    assert hooks == [] and len(vectors) == 1
    assert vectors[0].layer_indices == [2] and vectors[0].scale == 1.0 and vectors[0].activations.dtype == torch.bfloat16
    torch.testing.assert_close(vectors[0].activations[0], (2.0 * d.W_dec[1] - d.W_dec[7]).to(torch.bfloat16))


def test_a_failing_clamp_hook_reports_instead_of_raising_inside_vllm():
    def broken(h):
        raise RuntimeError("boom")

    broken.to = lambda device: broken
    hook = ClampHook(broken, torch.zeros(1), torch.zeros(1, 4))
    ctx = Ctx()
    assert hook(ctx, torch.zeros(3, 4)) is None
    assert ctx.saved == {"error": "RuntimeError: boom"}


# ---------------------------------------------------------------- both backends on the embedded model
needs_vllm = pytest.mark.skipif(
    not (vllm_backend.installed("vllm") and vllm_backend.installed("vllm_lens")),
    reason='vllm and vllm-lens are not installed: `pip install "esr-eval[vllm]"` (GPU) or the CPU recipe in docs/engines.md',
)


def on_vllm(test):
    """Marks of a test that runs vLLM: `vllm` (select with -m vllm), `slow` (out of the default suite)."""
    for mark in (pytest.mark.vllm, pytest.mark.slow, needs_vllm):
        test = mark(test)
    return test


# Measured on this model (fp32, CPU): greedy tokens equal; residual and latent read-outs within
# 1e-4 / 3e-4 of the HF backend's (values up to about 136 / 70).
RESIDUAL_ATOL = 1e-3
LATENT_ATOL = 2e-3

REQUESTS = [
    GenerationRequest(PROMPT, (), 32, 0.0),
    GenerationRequest(PROMPT, (Intervention(100, 40.0),), 32, 0.0),
    GenerationRequest(OTHER, (Intervention(7, 0.0, "clamp"), Intervention(100, 30.0)), 32, 0.0),
    GenerationRequest(OTHER, (Intervention(2000, 8.0, "clamp"),), 32, 0.0),
    GenerationRequest(OTHER, (Intervention(55, 25.0), Intervention(1200, -10.0)), 32, 0.0, repetition_penalty=1.3),
]


@pytest.fixture(scope="module")
def hf_engine():
    from esr_eval.steering.backends.hf import HFEngine

    return HFEngine.load("smollm2-135m", dtype="float32")  # the tolerances below are fp32's


@pytest.fixture(scope="module")
def vllm_engine():
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return vllm_backend.VLLMEngine.load("smollm2-135m", dtype="float32", max_model_len=2048, max_num_seqs=8)


@pytest.fixture(scope="module")
def hf_answers(hf_engine):
    return hf_engine.generate(REQUESTS)


@on_vllm
def test_greedy_answers_equal_token_for_token_in_a_mixed_batch(vllm_engine, hf_answers):
    batch = vllm_engine.generate(REQUESTS)
    alone = [vllm_engine.generate([r])[0] for r in REQUESTS]
    for got, single, want in zip(batch, alone, hf_answers):
        assert got.token_ids == want.token_ids and got.text == want.text
        assert single.token_ids == got.token_ids  # a row alone equals the row in the batch
        assert (got.stop_reason, got.prompt_tokens, got.completion_tokens) == (want.stop_reason, want.prompt_tokens, want.completion_tokens)
    assert len({tuple(a.token_ids) for a in batch}) == len(batch)  # every intervention changed the answer


@on_vllm
def test_a_seeded_sampled_row_is_the_same_alone_and_in_a_batch(vllm_engine):
    sampled = GenerationRequest(OTHER, (Intervention(100, 30.0),), 24, 0.9, top_p=0.9, seed=5)
    batch = vllm_engine.generate([REQUESTS[0], sampled, REQUESTS[2]])[1]
    assert vllm_engine.generate([sampled])[0].token_ids == batch.token_ids
    reseeded = GenerationRequest(OTHER, (Intervention(100, 30.0),), 24, 0.9, top_p=0.9, seed=6)
    assert vllm_engine.generate([reseeded])[0].token_ids != batch.token_ids


@on_vllm
def test_read_outs_agree_and_vllm_layer_is_the_hf_hook_point(vllm_engine, hf_engine, hf_answers):
    got, want = vllm_engine.prompt_residuals([PROMPT, OTHER]), hf_engine.prompt_residuals([PROMPT, OTHER])
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=RESIDUAL_ATOL, rtol=0)
    # the neighbouring layers are far off: vLLM layer i is the output of HF decoder layer i
    hooks = hf_engine.hooks
    for other in (hf_engine.layer - 1, hf_engine.layer + 1):
        from esr_eval.steering.hooks import ResidualHooks, decoder_layers

        hf_engine.hooks = ResidualHooks(decoder_layers(hf_engine.model)[other])
        try:
            assert (hf_engine.prompt_residuals([PROMPT])[0] - got[0]).abs().max() > 100 * RESIDUAL_ATOL
        finally:
            hf_engine.hooks.remove()
            hf_engine.hooks = hooks
    conversations = [(PROMPT, hf_answers[1].text), (OTHER, hf_answers[2].text)]
    steering = [list(REQUESTS[1].interventions), list(REQUESTS[2].interventions)]
    got = vllm_engine.read_latents(conversations, None, steering)
    want = hf_engine.read_latents(conversations, None, steering)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.shape[0] > 10
        torch.testing.assert_close(g, w, atol=LATENT_ATOL, rtol=0)
    assert got[1][:, 7].abs().max() == 0  # the clamp held at every answer token


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server():
    """`vllm serve` of the embedded model (the server module: the CPU build's `vllm` command
    lacks package metadata)."""
    import httpx

    from esr_eval.steering.models import plain_folder
    from esr_eval.steering.presets import get_preset

    folder = plain_folder(get_preset("smollm2-135m").model_source())
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", folder, "--served-model-name", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--max-model-len", "2048", "--max-num-seqs", "8",
           "--enforce-eager", "--no-enable-prefix-caching"]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert server.poll() is None, "the vLLM server exited while starting"
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(2)
        yield url
    finally:
        server.terminate()
        server.wait(60)


@on_vllm
def test_a_vllm_serve_endpoint_steers_each_request_like_the_hf_backend(vllm_server, hf_engine, hf_answers):
    remote = vllm_backend.VLLMEngine.load("smollm2-135m", dtype="float32", base_url=vllm_server)
    assert isinstance(remote.transport, vllm_backend.Server) and remote.transport.model == "smollm2"
    for got, want in zip(remote.generate(REQUESTS), hf_answers):
        assert got.token_ids == want.token_ids and got.text == want.text
    got = remote.read_latents([(OTHER, hf_answers[2].text)], [7, 100], [list(REQUESTS[2].interventions)])[0]
    want = hf_engine.read_latents([(OTHER, hf_answers[2].text)], [7, 100], [list(REQUESTS[2].interventions)])[0]
    torch.testing.assert_close(got, want, atol=LATENT_ATOL, rtol=0)
    torch.testing.assert_close(remote.prompt_residuals([PROMPT])[0], hf_engine.prompt_residuals([PROMPT])[0], atol=RESIDUAL_ATOL, rtol=0)
