"""Batching and the loss for Doc-to-LoRA meta-training.

The student is the frozen base model with the generated adapter on its ``down_proj`` modules and *no* document
in its prompt: ``system: Answer briefly. / user: question / assistant: answer``. The loss is cross-entropy on the
answer tokens (+ ``<|im_end|>``), mean per sample, optionally plus a KL term to the teacher (the same base model
with the document in its prompt) and an L1 penalty on the generated components.

>>> # batch = student_batch(tok, ["What is X?"], ["7"]); nll = answer_nll(model, batch, writes, hyper)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from memory.prompts import QA_SYSTEM as SYSTEM_PROMPT
from memory.prompts import context_prompt, parametric_prompt


@dataclass
class StudentBatch:
    input_ids: Tensor  # [bs, T]
    attention_mask: Tensor  # [bs, T]
    label_pos: Tensor  # [n] flat indices into bs*T of positions whose next token is a label
    labels: Tensor  # [n]
    sample_of: Tensor  # [n] which sample each label belongs to


def prompt_ids(tokenizer, question: str, context: str | None = None) -> list[int]:
    """Chat-template ids of the student prompt (or, with ``context``, the in-context teacher prompt)."""
    user = parametric_prompt(question) if context is None else context_prompt(question, [context])
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
    out = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out)


def student_batch(
    tokenizer, questions: Sequence[str], answers: Sequence[str], contexts: Sequence[str | None] | None = None
) -> StudentBatch:
    """Right-padded prompt+answer ids with the answer tokens (and the end-of-turn token) as labels."""
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    seqs, spans = [], []
    for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
        p = prompt_ids(tokenizer, q, contexts[i] if contexts else None)
        ans = [*tokenizer(a, add_special_tokens=False).input_ids, end]
        seqs.append(p + ans)
        spans.append((len(p), len(ans)))
    T = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    ids = torch.full((len(seqs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.long)
    pos, lab, who = [], [], []
    for i, (s, (start, n)) in enumerate(zip(seqs, spans, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
        for j in range(n):
            pos.append(i * T + start + j - 1)
            lab.append(s[start + j])
            who.append(i)
    return StudentBatch(ids, mask, torch.tensor(pos), torch.tensor(lab), torch.tensor(who))


def encode_documents(tokenizer, texts: Sequence[str], max_tokens: int) -> tuple[Tensor, Tensor]:
    """Right-padded raw token ids of documents, truncated to ``max_tokens``."""
    rows = [tokenizer(t, add_special_tokens=False).input_ids[:max_tokens] or [tokenizer.eos_token_id] for t in texts]
    T = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), T), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask


def chunked_features(
    model: nn.Module, tokenizer, texts: Sequence[str], chunk: int, max_chunks: int, layers: Sequence[int]
):
    """Hypernetwork inputs of documents split into chunks of ``chunk`` tokens (as at inference: each chunk is
    read on its own, chunks overlap by one token), at most ``max_chunks`` per document; the chunks of a
    document are concatenated along the token axis (padding masked), so a multi-chunk document gives one
    adapter with the components of all its chunks."""
    from memory.hyper.d2l import DocFeatures, _chunks_of, document_features

    dev = next(model.parameters()).device
    per_doc = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False).input_ids[: chunk * max_chunks + 1] or [tokenizer.eos_token_id]
        per_doc.append(_chunks_of(ids, chunk))
    rows = [c for cs in per_doc for c in cs]
    T = max(len(r) for r in rows)
    ids = torch.zeros((len(rows), T), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    f = document_features(model, ids.to(dev), mask.to(dev), layers)
    if all(len(cs) == 1 for cs in per_doc):
        return f
    nc = max(len(cs) for cs in per_doc)
    bs = len(per_doc)

    def gather(x: Tensor) -> Tensor:
        out = x.new_zeros((bs, nc * T, *x.shape[2:]))
        k = 0
        for d, cs in enumerate(per_doc):
            for c in range(len(cs)):
                out[d, c * T : (c + 1) * T] = x[k]
                k += 1
        return out

    return DocFeatures(
        m={layer: gather(v) for layer, v in f.m.items()}, next_emb=gather(f.next_emb), mask=gather(f.mask)
    )


def answer_logits(model: Any, batch: StudentBatch) -> Tensor:
    """Logits ``[n, vocab]`` at the label positions only (flattened, so lm_head runs on n rows).

    ``model`` is a transformers causal LM: its ``model`` (the decoder) and ``lm_head`` are found by name."""
    dev = next(model.parameters()).device
    hs = model.model(
        input_ids=batch.input_ids.to(dev), attention_mask=batch.attention_mask.to(dev), use_cache=False
    ).last_hidden_state
    flat = hs.reshape(-1, hs.shape[-1])[batch.label_pos.to(dev)]
    return model.lm_head(flat).float()


def per_sample_nll(logits: Tensor, batch: StudentBatch, n: int) -> Tensor:
    """Mean answer-token NLL per sample ``[n]``."""
    tok = F.cross_entropy(logits, batch.labels.to(logits.device), reduction="none")
    who = batch.sample_of.to(tok.device)
    tot = torch.zeros(n, device=tok.device).index_add_(0, who, tok)
    cnt = torch.zeros(n, device=tok.device).index_add_(0, who, torch.ones_like(tok))
    return tot / cnt.clamp(min=1)


def kl_to_teacher(
    student_logits: Tensor, teacher_logits: Tensor, batch: StudentBatch, n: int, top_k: int = 16
) -> Tensor:
    """Per-sample cross-entropy to the teacher's top-k distribution at the answer tokens (D2L's KD loss)."""
    vals, idx = teacher_logits.float().topk(top_k, dim=-1)
    p = vals.softmax(-1)
    logq = student_logits.log_softmax(-1).gather(-1, idx)
    tok = -(p * logq).sum(-1)
    who = batch.sample_of.to(tok.device)
    tot = torch.zeros(n, device=tok.device).index_add_(0, who, tok)
    cnt = torch.zeros(n, device=tok.device).index_add_(0, who, torch.ones_like(tok))
    return tot / cnt.clamp(min=1)
