"""A tiny random Llama + character tokenizer wrapped as a ``BaseModel`` for fast D2L tests."""

from __future__ import annotations

import torch
from _fixtures_models import CHARS, tiny_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from memory.models import BaseModel, compute_fingerprint


def tiny_base(seed: int = 0, layers: int = 4, name: str = "tiny") -> BaseModel:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(CHARS) + 2,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    fp = compute_fingerprint(name, model)
    return BaseModel(model=model, tokenizer=tiny_tokenizer(), name=name, fingerprint=fp)
