"""Tiny random Llama + character tokenizer wrapped as a BaseModel (fast tests of the runtime)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from memory.lora import LoraAdapter
from memory.models import BaseModel, compute_fingerprint

CHARS = list("abcdefghijklmnopqrstuvwxyz .,?!0123456789")


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_base(seed: int = 0) -> BaseModel:
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds OpenMP contention
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(CHARS) + 2,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=1,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(cfg).eval().requires_grad_(False)
    fp = compute_fingerprint("tiny", model)
    return BaseModel(model=model, tokenizer=tiny_tokenizer(), name="tiny", fingerprint=fp)


def rand_adapter(base: BaseModel, rank: int, seed: int) -> LoraAdapter:
    g = torch.Generator().manual_seed(seed)
    w = {}
    for p in base.linear_paths(["self_attn.q_proj", "mlp.down_proj"]):
        lin = base.model.get_submodule(p)
        w[p] = (torch.randn(rank, lin.in_features, generator=g), torch.randn(lin.out_features, rank, generator=g) * 0.5)
    return LoraAdapter(w, base.fingerprint)
