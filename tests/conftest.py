"""Shared fixtures: a tiny random Llama with its own tokenizer, and random SAEs on its residual."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("INSPECT_DISPLAY", "none")

TINY_LAYER = 2
TINY_HIDDEN = 32
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Explain how to brew coffee with a french press and hot water.",
    "How do you tie a tie? Wait, that's not right, let me try again.",
    "The cat sat on the mat while the dog ran in the park.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "To bake bread you mix flour, water, salt and yeast, then knead.",
    "Bicycles, oceans, volcanoes, music, football, painting and chess.",
]


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 4-layer, width-32 random Llama saved as a normal Hugging Face folder."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = _tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_random_sae(folder: Path, d_sae: int = 64, kind: str = "standard", seed: int = 0) -> Path:
    """A random sae-lens SAE hooked at the tiny model's layer 2, with labels for every latent."""
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    meta = SAEMetadata(hook_name=f"model.layers.{TINY_LAYER}", model_name="tiny-llama")
    if kind == "topk":
        sae = TopKSAE(TopKSAEConfig(d_in=TINY_HIDDEN, d_sae=d_sae, k=8, metadata=meta))
    else:
        sae = StandardSAE(StandardSAEConfig(d_in=TINY_HIDDEN, d_sae=d_sae, metadata=meta))
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_(0, 0.3)
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        sae.b_enc.fill_(0.05)
    folder.mkdir(parents=True, exist_ok=True)
    sae.save_model(folder)
    topics = ["coffee", "the ocean", "volcanoes", "football", "jazz music", "chess", "bread", "bicycles"]
    labels = {str(k): f"{topics[k % len(topics)]} ({k})" for k in range(d_sae)}
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory) -> Path:
    return write_random_sae(tmp_path_factory.mktemp("tiny-sae") / "sae")


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir, tiny_sae_dir):
    from esr_eval.steering.backends.hf import HFEngine

    return HFEngine.load(str(tiny_model_dir), dictionary=str(tiny_sae_dir), dtype="float32")
