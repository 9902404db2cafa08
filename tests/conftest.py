"""Shared fixtures: a tiny random Llama with its own tokenizer, and random SAEs on its residual
(the helpers they use, and every helper tests share, are in helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from helpers import TINY_HIDDEN, tiny_tokenizer, write_random_sae

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("INSPECT_DISPLAY", "none")

@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 4-layer, width-32 random Llama saved as a normal Hugging Face folder."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
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


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory) -> Path:
    return write_random_sae(tmp_path_factory.mktemp("tiny-sae") / "sae")


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir, tiny_sae_dir):
    from esr_eval.steering.backends.hf import HFEngine

    return HFEngine.load(str(tiny_model_dir), dictionary=str(tiny_sae_dir), dtype="float32")
