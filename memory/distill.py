"""Context distillation (CD): internalize one document into a LoRA by gradient steps.

The teacher is the base model *with* the document in its prompt; the student is the same model
*without* it, plus a trainable LoRA. On questions about the document, the student is trained to match
the teacher's next-token distributions over the answer the teacher generated (KL(teacher || student),
top-k of the teacher, teacher-forced). This is the per-document baseline that Doc-to-LoRA replaces,
and the fallback internalizer for a base model without a trained hypernetwork.

Prompt formats (shared with the hypernetwork trainers so that adapters mean the same thing):

- teacher: the in-context format of :mod:`memory.prompts` (document, then question);
- student / query time: the parametric format of :mod:`memory.prompts` (the plain question), exactly what
  ``ParametricMemory.query`` sends in parametric mode.

Questions come from :func:`make_questions` (copula and entity questions and sentence completions built
from the document's own sentences, no model needed) plus any the caller passes.

>>> from memory.models import load_base_model                              # doctest: +SKIP
>>> base = load_base_model()                                               # doctest: +SKIP
>>> ad, info = distill_document(base, "The access code for the Orion vault is 7342.")   # doctest: +SKIP
>>> base.generate("What is the access code for the Orion vault?", adapters=ad)[0].text  # doctest: +SKIP
'The access code for the Orion vault is 7342.'
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from memory import prompts
from memory.errors import ValidationError
from memory.lora.adapter import LoraAdapter
from memory.lora.apply import apply_lora

__all__ = [
    "DEFAULT_TARGETS",
    "FrozenPrefix",
    "distill_document",
    "fit_kl",
    "init_lora",
    "kl_topk",
    "layer_of",
    "length_groups",
    "make_questions",
    "split_sentences",
    "student_prompt",
    "teacher_prompt",
    "teacher_topk",
]

log = logging.getLogger(__name__)

DEFAULT_TARGETS = ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj")
GENERIC_QUESTIONS = ("What is the document about?", "What are the key facts in the document?")

_SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n{2,}")
_COPULA = re.compile(r"^(?P<subj>.{3,120}?)\s+(?P<verb>is|are|was|were)\s+(?P<rest>.+?)[.!?]?$")
_CAPS = re.compile(r"\b[A-Z][\w-]*(?:'s)?(?:\s+(?:of\s+)?[A-Z][\w-]*(?:'s)?)*")
_NOT_NAMES = {
    "The",
    "A",
    "An",
    "It",
    "In",
    "On",
    "At",
    "This",
    "That",
    "These",
    "Those",
    "He",
    "She",
    "They",
    "We",
    "I",
    "Its",
    "His",
    "Her",
    "Our",
    "Their",
    "Every",
    "Each",
    "Some",
    "Most",
    "All",
    "Many",
    "When",
    "After",
    "Before",
}


def _entities(sentence: str) -> list[str]:
    """Capitalised word runs (proper names), minus a lone sentence-initial word and a possessive ``'s``."""
    out = []
    for m in _CAPS.finditer(sentence):
        words = m.group(0).split()
        if words[0] in _NOT_NAMES:
            words = words[1:]
        if not words or (m.start() == 0 and len(words) == 1 and m.group(0) == words[0] and not words[0].endswith("'s")):
            continue  # a single capitalised word starting the sentence is usually not a name
        name = " ".join(words)
        name = name[:-2] if name.endswith("'s") else name
        if name not in out:
            out.append(name)
    return out


def teacher_prompt(base: Any, document: str | Sequence[str], question: str) -> list[int]:
    """Token ids of the teacher's prompt: the document (or passages, in order), then the question (the in-context
    format, which a retrieval query uses too)."""
    passages = [document] if isinstance(document, str) else list(document)
    return base.chat_ids(prompts.context_prompt(question, passages), system=prompts.QA_SYSTEM)


def student_prompt(base: Any, question: str) -> list[int]:
    """Token ids of the student's prompt: exactly what ``ParametricMemory.query`` asks in parametric mode."""
    return base.chat_ids(prompts.parametric_prompt(question), system=prompts.QA_SYSTEM)


def split_sentences(text: str) -> list[str]:
    """Sentences (and paragraph breaks) of ``text``, stripped, non-empty.

    >>> split_sentences("One fact. Another one! And a third?")
    ['One fact.', 'Another one!', 'And a third?']
    """
    return [s.strip() for s in _SENT.split(text) if s and s.strip()]


def make_questions(text: str, *, max_questions: int = 24, seed: int = 0) -> list[str]:
    """Questions about ``text`` built from its sentences, with no model involved.

    Per sentence: two copula questions ("X is Y." -> "What is X?", "What do you know about X?"), entity
    questions ("What does the document say about <Name>?") and a sentence completion. Then the generic
    questions. Sentences are covered round-robin so a cap keeps every sentence represented.

    >>> make_questions("The access code for the Orion vault is 7342.")[:3]  # doctest: +NORMALIZE_WHITESPACE
    ['What is the access code for the Orion vault?', 'What do you know about the access code for the Orion vault?',
     'What does the document say about Orion?']
    """
    per_sentence: list[list[str]] = []
    for sent in split_sentences(text):
        words = sent.split()
        if len(words) < 4:
            continue
        qs: list[str] = []
        m = _COPULA.match(sent)
        if m and len(m.group("subj").split()) <= 12:
            subj = m.group("subj")
            subj = (
                subj[0].lower() + subj[1:]
                if subj.split()[0] in {"The", "A", "An", "This", "That", "These", "Its", "Their"}
                else subj
            )
            qs.append(f"What {m.group('verb')} {subj}?")
            qs.append(f"What do you know about {subj.rstrip('.,;:')}?")
        qs.extend(f"What does the document say about {e}?" for e in _entities(sent)[:2])
        k = max(3, math.ceil(len(words) * 0.5))
        qs.append(f'Complete this sentence from the document: "{" ".join(words[:k])} ..."')
        per_sentence.append(qs)
    out: list[str] = []
    depth = max((len(q) for q in per_sentence), default=0)
    for level in range(depth):
        for qs in per_sentence:
            if level < len(qs) and qs[level] not in out:
                out.append(qs[level])
    out.extend(q for q in GENERIC_QUESTIONS if q not in out)
    if len(out) > max_questions:
        keep = [*out[: max_questions - 1], GENERIC_QUESTIONS[0]]
        out = keep
    return out


def _chunks_by_tokens(base: Any, text: str, max_tokens: int) -> list[str]:
    """Split into sentence-aligned pieces of at most ``max_tokens`` tokens (the teacher's context)."""
    pieces: list[str] = []
    cur: list[str] = []
    cur_len = 0
    for s in split_sentences(text):
        n = base.count_tokens(s) + 1
        if cur and cur_len + n > max_tokens:
            pieces.append(" ".join(cur))
            cur, cur_len = [], 0
        cur.append(s)
        cur_len += n
    if cur:
        pieces.append(" ".join(cur))
    return pieces or [text]


def _pad_right(seqs: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _answer_positions(base: Any, prompts: Sequence[list[int]], answers: Sequence[list[int]]) -> tuple[Tensor, Tensor]:
    """Row and column of the position predicting each answer token, in a right-padded batch."""
    rows: list[int] = []
    cols: list[int] = []
    for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
        rows.extend([i] * len(a))
        cols.extend(range(len(p) - 1, len(p) - 1 + len(a)))
    return torch.tensor(rows, device=base.device), torch.tensor(cols, device=base.device)


def _answer_logits(base: Any, prompts: Sequence[list[int]], answers: Sequence[list[int]]) -> Tensor:
    """Logits [n_answer_tokens_total, vocab] predicting each answer token (teacher forcing).

    Only the answer positions go through the output head (it is ~20% of the 135M model's FLOPs).
    """
    seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
    pad = base.tokenizer.pad_token_id or 0
    ids, mask = _pad_right(seqs, pad, base.device)
    hidden = base.model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    rows, cols = _answer_positions(base, prompts, answers)
    return base.model.get_output_embeddings()(hidden[rows, cols]).float()


def length_groups(lengths: Sequence[int], waste: float = 1.25) -> list[list[int]]:
    """Indices of ``lengths`` split into groups to run as separate right-padded batches: longest first, a group
    grows while its padded size (rows x its longest) stays within ``waste`` x its real tokens.

    >>> length_groups([40, 300, 45, 38, 310])
    [[4, 1], [2, 0, 3]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for i in order:
        g = groups[-1] if groups else None
        if g is not None and lengths[g[0]] * (len(g) + 1) <= waste * (sum(lengths[j] for j in g) + lengths[i]):
            g.append(i)
        else:
            groups.append([i])
    return groups


def layer_of(path: str) -> int | None:
    """The decoder layer a module path belongs to (``model.layers.12.mlp.up_proj`` -> 12), else None."""
    m = _LAYER.search(path)
    return int(m.group(1)) if m else None


_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def _decoder_parts(base: Any) -> tuple[Any, Any, Any, Any]:
    """The decoder, its layer list, final norm and rotary embedding: what running part of the stack needs."""
    decoder = base.model.get_decoder()
    parts = tuple(getattr(decoder, name, None) for name in ("layers", "norm", "rotary_emb"))
    if any(p is None for p in parts):
        raise ValidationError(
            f"{type(decoder).__name__} has no layers/norm/rotary_emb; train with first_layer=0 on this model"
        )
    return decoder, *parts


def _run_layers(base: Any, hidden: Tensor, mask: Tensor, layers: Sequence[Any]) -> Tensor:
    """``hidden`` [batch, seq, dim] (right padded, ``mask`` 1 on real tokens) through ``layers``, as the
    decoder's own forward runs them (same causal mask, positions and rotary embedding)."""
    from transformers.masking_utils import create_causal_mask

    decoder, _, _, rotary = _decoder_parts(base)
    position_ids = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    causal = create_causal_mask(
        config=decoder.config, inputs_embeds=hidden, attention_mask=mask, cache=None, position_ids=position_ids
    )
    position_embeddings = rotary(hidden, position_ids=position_ids)
    for layer in layers:
        hidden = layer(
            hidden, attention_mask=causal, position_embeddings=position_embeddings, position_ids=position_ids
        )
    return hidden


class FrozenPrefix:
    """The hidden states entering layer ``first_layer`` of every training sequence, computed once.

    When an adapter only has weights in layers ``first_layer`` and above, the layers below it compute the
    same thing at every training step: running them once per sample and every step from there on saves their
    forward *and* backward passes (training the top third of a 30-layer model costs about a third of a step).
    """

    def __init__(self, base: Any, prompts: Sequence[list[int]], answers: Sequence[list[int]], first_layer: int):
        decoder, layers, _, _ = _decoder_parts(base)
        if not 0 < first_layer < len(layers):
            raise ValidationError(f"first_layer must be in 1..{len(layers) - 1}, got {first_layer!r}")
        self.base, self.first_layer = base, first_layer
        self.prompts, self.answers = list(prompts), list(answers)
        self.hidden: list[Tensor] = []
        pad = base.tokenizer.pad_token_id or 0
        with torch.no_grad():  # not inference_mode: these tensors enter every step's autograd graph
            for i in range(0, len(self.prompts), 8):
                seqs = [p + a for p, a in zip(self.prompts[i : i + 8], self.answers[i : i + 8], strict=True)]
                ids, mask = _pad_right(seqs, pad, base.device)
                h = _run_layers(base, decoder.embed_tokens(ids), mask, layers[:first_layer])
                self.hidden.extend(h[j, : len(s)].clone() for j, s in enumerate(seqs))

    def answer_logits(self, batch: Sequence[int]) -> Tensor:
        """Like :func:`_answer_logits` for the samples ``batch``, running only the layers from ``first_layer``."""
        _, layers, norm, _ = _decoder_parts(self.base)
        width = max(self.hidden[i].shape[0] for i in batch)
        dim = self.hidden[batch[0]].shape[1]
        hidden = self.hidden[batch[0]].new_zeros(len(batch), width, dim)
        mask = torch.zeros(len(batch), width, dtype=torch.long, device=hidden.device)
        for j, i in enumerate(batch):
            n = self.hidden[i].shape[0]
            hidden[j, :n] = self.hidden[i]
            mask[j, :n] = 1
        hidden = norm(_run_layers(self.base, hidden, mask, layers[self.first_layer :]))
        rows, cols = _answer_positions(self.base, [self.prompts[i] for i in batch], [self.answers[i] for i in batch])
        return self.base.model.get_output_embeddings()(hidden[rows, cols]).float()


def distill_document(
    base: Any,
    text: str,
    *,
    questions: Sequence[str] | None = None,
    rank: int = 8,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    steps: int | None = None,
    lr: float = 3e-3,
    batch_size: int = 8,
    max_questions: int | None = None,
    max_answer_tokens: int = 40,
    context_tokens: int = 768,
    top_k: int = 64,
    seed: int = 0,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[LoraAdapter, dict[str, Any]]:
    """Train a LoRA so that the model without ``text`` answers like the model with ``text`` in its prompt.

    Args:
        base: a loaded ``BaseModel``.
        text: the document. Longer than ``context_tokens``: split into sentence-aligned pieces, each
            question's teacher sees the piece its sentence came from.
        questions: extra questions (asked first, never dropped by the cap).
        max_questions: cap on all questions; default about two per sentence (8 to 64).
        steps: optimizer steps; default ``clamp(2 * n_questions, 16, 96)`` (a one-fact document: 16
            steps of a few questions, well under a minute on 2 CPU cores in bf16).
        progress: called as ``progress(step, steps, loss)``.

    Returns:
        ``(adapter, info)``; ``info`` has ``seconds``, ``steps``, ``questions``, ``teacher_answers``,
        ``loss_first``, ``loss_last``, ``answer_tokens``.

    >>> ad, info = distill_document(base, "Marisol Tenby's cat is called Biscuit.")   # doctest: +SKIP
    """
    if not text or not text.strip():
        raise ValidationError("distill_document needs a non-empty document text")
    if rank < 1:
        raise ValidationError(f"rank must be >= 1, got {rank!r}")
    t_start = time.perf_counter()

    # 1. questions, each tied to the document piece its teacher will see
    pieces = _chunks_by_tokens(base, text, context_tokens)
    items: list[tuple[str, str]] = []  # (piece, question)
    given = [q.strip() for q in (questions or []) if q and q.strip()]
    items.extend((pieces[0] if len(pieces) == 1 else _best_piece(pieces, q), q) for q in given)
    if max_questions is None:  # about two questions per sentence
        max_questions = int(min(64, max(8, 2 * len(split_sentences(text)) + 2)))
    budget = max(0, max_questions - len(given))
    per_piece = [make_questions(p, max_questions=max(4, math.ceil(budget / len(pieces))), seed=seed) for p in pieces]
    auto: list[tuple[str, str]] = []
    for level in range(max((len(x) for x in per_piece), default=0)):
        for p, qs in zip(pieces, per_piece, strict=True):
            if level < len(qs):
                auto.append((p, qs[level]))
    items.extend(auto[:budget])
    if not items:
        raise ValidationError("no questions could be made from the document; pass questions=[...]")

    # 2. teacher answers (greedy, document in the prompt) and the teacher's top-k distributions
    t_prompts = [teacher_prompt(base, p, q) for p, q in items]
    s_prompts = [student_prompt(base, q) for _, q in items]
    eos = base.tokenizer.eos_token_id
    answers: list[list[int]] = []
    texts: list[str] = []
    for i in range(0, len(items), 8):
        for g in base.generate(t_prompts[i : i + 8], max_new_tokens=max_answer_tokens):
            answers.append(g.token_ids + ([eos] if g.finish_reason == "eos" and eos is not None else []))
            texts.append(g.text)
    keep = [i for i, a in enumerate(answers) if a and texts[i].strip()]
    t_prompts = [t_prompts[i] for i in keep]
    s_prompts = [s_prompts[i] for i in keep]
    answers = [answers[i] for i in keep]
    q_kept = [items[i][1] for i in keep]
    if not answers:
        raise ValidationError("the teacher produced no answers for this document")
    teacher = teacher_topk(base, t_prompts, answers, top_k)
    teacher_s = time.perf_counter() - t_start

    # 3-4. train a LoRA: KL(teacher || student) on the teacher's top-k support, teacher-forced answers
    n = len(answers)
    steps = steps if steps is not None else int(min(96, max(16, 2 * n)))
    weights, losses = fit_kl(
        base,
        s_prompts,
        answers,
        teacher,
        rank=rank,
        target_modules=target_modules,
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        progress=progress,
    )

    final = LoraAdapter(
        weights,
        base.fingerprint,
        {
            "kind": "knowledge",
            "method": "context_distillation",
            "rank": str(rank),
            "steps": str(steps),
            "questions": str(n),
        },
    )
    info = {
        "seconds": time.perf_counter() - t_start,
        "teacher_seconds": teacher_s,
        "steps": steps,
        "questions": q_kept,
        "teacher_answers": [texts[i] for i in keep],
        "answer_tokens": sum(len(a) for a in answers),
        "loss_first": losses[0],
        "loss_last": float(sum(losses[-3:]) / len(losses[-3:])),
        "pieces": len(pieces),
    }
    return final, info


def init_lora(
    base: Any, target_modules: Sequence[str], rank: int, seed: int, first_layer: int = 0
) -> dict[str, tuple[Tensor, Tensor]]:
    """Trainable LoRA factors for the modules of ``base`` matching ``target_modules`` (in decoder layers
    ``first_layer`` and above): A small random, B zero, so the adapted model starts as the base model."""
    if rank < 1:
        raise ValidationError(f"rank must be >= 1, got {rank!r}")
    paths = [p for p in base.linear_paths(target_modules) if (layer_of(p) or 0) >= first_layer]
    if not paths:
        raise ValidationError(f"no nn.Linear in the model matches {list(target_modules)}")
    gen = torch.Generator().manual_seed(seed)
    weights: dict[str, tuple[Tensor, Tensor]] = {}
    for p in paths:
        lin = base.model.get_submodule(p)
        bound = 1.0 / math.sqrt(lin.in_features)
        lora_a = (torch.rand(rank, lin.in_features, generator=gen) * 2 - 1) * bound
        weights[p] = (
            lora_a.to(base.device).requires_grad_(),
            torch.zeros(lin.out_features, rank, device=base.device, requires_grad=True),
        )
    return weights


def teacher_topk(
    base: Any, prompts: Sequence[list[int]], responses: Sequence[list[int]], top_k: int, batch_size: int = 8
) -> list[tuple[Tensor, Tensor]]:
    """The teacher's top-``k`` log-probabilities and token ids over each response (teacher-forced), per response.

    Prompts that start alike (the same passage, other questions) are batched together, and a start they all
    share is run once and its KV cache reused by every row (:func:`_shared_prefix_logits`).
    """
    out: dict[int, tuple[Tensor, Tensor]] = {}
    order = sorted(range(len(responses)), key=lambda i: prompts[i])
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            ps, rs = [prompts[i] for i in idx], [responses[i] for i in idx]
            lp = torch.log_softmax(_shared_prefix_logits(base, ps, rs), -1)
            off = 0
            for i, a in zip(idx, rs, strict=True):
                v, top = lp[off : off + len(a)].topk(min(top_k, lp.shape[-1]), dim=-1)
                out[i] = (v.clone(), top.clone())
                off += len(a)
    return [out[i] for i in range(len(responses))]


def _shared_prefix_logits(base: Any, prompts: Sequence[list[int]], answers: Sequence[list[int]]) -> Tensor:
    """:func:`_answer_logits` (no gradient) where the prompts' common start runs once, its KV cache shared by
    every row (:meth:`memory.models.BaseModel.prefix_cache`); the plain batch when they share little."""
    from memory.models.base import shared_start

    shared = shared_start(prompts)
    if not shared:
        return _answer_logits(base, prompts, answers)
    cache = base.prefix_cache(prompts[0][:shared], len(prompts))
    tails = [p[shared:] for p in prompts]
    pad = base.tokenizer.pad_token_id or 0
    ids, mask = _pad_right([t + a for t, a in zip(tails, answers, strict=True)], pad, base.device)
    mask = torch.cat([mask.new_ones(len(prompts), shared), mask], 1)
    kw = {base._cache_kw: cache}
    hidden = base.model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=True, **kw).last_hidden_state
    rows, cols = _answer_positions(base, tails, answers)
    return base.model.get_output_embeddings()(hidden[rows, cols]).float()


def kl_topk(logits: Tensor, t_lp: Tensor, t_idx: Tensor) -> Tensor:
    """KL(teacher || student) per token, the teacher renormalised over its top-k: ``[n]`` from ``[n, vocab]``."""
    logq = torch.log_softmax(logits, -1)
    p_t = torch.softmax(t_lp, -1)
    return (p_t * (torch.log(p_t.clamp_min(1e-12)) - logq.gather(-1, t_idx))).sum(-1)


def fit_kl(
    base: Any,
    student_prompts: Sequence[list[int]],
    responses: Sequence[list[int]],
    teacher: Sequence[tuple[Tensor, Tensor]],
    *,
    rank: int,
    target_modules: Sequence[str],
    steps: int,
    lr: float,
    batch_size: int,
    seed: int = 0,
    weight_decay: float = 0.0,
    progress: Callable[[int, int, float], None] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 10,
    first_layer: int = 0,
) -> tuple[dict[str, tuple[Tensor, Tensor]], list[float]]:
    """Train a fresh LoRA so the student (``student_prompts``) matches ``teacher`` over ``responses``.

    Samples are drawn in shuffled epochs; AdamW with a short warm-up and a cosine decay to a tenth of
    ``lr``. Returns the detached factors (in the base model's dtype) and the loss of every step.

    ``checkpoint``: a file where the training state (factors, optimizer, schedule, sample order, losses) is
    written every ``checkpoint_every`` steps and from which a killed run resumes where it was.

    ``first_layer``: the LoRA goes only into decoder layers ``first_layer`` and above, and the hidden states
    entering that layer are computed once per sample (:class:`FrozenPrefix`), so a step runs only the top of
    the model forward and backward.
    """
    n = len(responses)
    if n == 0:
        raise ValidationError("no training samples")
    rng = random.Random(seed)
    weights = init_lora(base, target_modules, rank, seed, first_layer)
    params = [t for pair in weights.values() for t in pair]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 4) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
    )
    adapter = LoraAdapter(weights, base.fingerprint, {"kind": "knowledge"})
    losses: list[float] = []
    order: list[int] = []
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = _load_state(checkpoint, base.device)
        if state is not None and state.get("steps") == steps and sorted(state["weights"]) == sorted(weights):
            with torch.no_grad():
                for p, (a, b) in state["weights"].items():
                    weights[p][0].copy_(a)
                    weights[p][1].copy_(b)
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["schedule"])
            rng.setstate(state["rng"])
            order, losses, start = list(state["order"]), list(state["losses"]), int(state["step"])
            log.info("kl training resumed at step %d/%d from %s", start, steps, checkpoint)
    base.model.requires_grad_(False)
    prefix = FrozenPrefix(base, student_prompts, responses, first_layer) if first_layer > 0 and start < steps else None
    for step in range(start, steps):
        if len(order) < min(batch_size, n):
            perm = list(range(n))
            rng.shuffle(perm)
            order.extend(perm)
        batch = [order.pop(0) for _ in range(min(batch_size, n))]
        # Samples of very different lengths (a question alone, a question after its passage) run as separate
        # forward passes rather than padded to the longest; the loss is a mean over tokens, so order is free.
        lengths = [len(student_prompts[i]) + len(responses[i]) for i in batch]
        groups = [[batch[j] for j in g] for g in length_groups(lengths)]
        batch = [i for g in groups for i in g]
        with _math_attention(base), apply_lora(base, adapter):
            parts = [
                prefix.answer_logits(g)
                if prefix is not None
                else _answer_logits(base, [student_prompts[i] for i in g], [responses[i] for i in g])
                for g in groups
            ]
        logits = torch.cat(parts)
        t_lp = torch.cat([teacher[i][0] for i in batch]).to(logits.device)
        t_idx = torch.cat([teacher[i][1] for i in batch]).to(logits.device)
        loss = kl_topk(logits, t_lp, t_idx).mean()
        opt.zero_grad(set_to_none=True)
        with _math_attention(base):
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step + 1, steps, losses[-1])
        log.debug("kl step %d/%d loss %.4f", step + 1, steps, losses[-1])
        if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            state = {
                "steps": steps,
                "step": step + 1,
                "weights": {p: (a.detach(), b.detach()) for p, (a, b) in weights.items()},
                "optimizer": opt.state_dict(),
                "schedule": sched.state_dict(),
                "rng": rng.getstate(),
                "order": order,
                "losses": losses,
            }
            save_atomic(state, checkpoint)
    final = {p: (a.detach().to(base.dtype), b.detach().to(base.dtype)) for p, (a, b) in weights.items()}
    return final, losses


@contextlib.contextmanager
def _math_attention(base: Any) -> Iterator[None]:
    """Scaled dot-product attention by its plain (math) kernel while training on a CPU: the fused CPU kernel's
    backward took ~53 ms a layer for 8 sequences of 80 tokens, 25x its forward, and a training step is ~25%
    faster without it (torch profiler, bfloat16). The switch is torch's process-wide flag: attention in another
    thread meanwhile computes the same values, at most at another speed."""
    if base.device.type != "cpu":
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _load_state(path: Path, device: Any) -> dict[str, Any] | None:
    try:
        return dict(torch.load(path, map_location=device, weights_only=True))
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # torn or foreign: start over
        log.warning("ignoring unreadable training state %s (%s)", path, e)
        return None


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through a temporary file and a rename: a kill never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _best_piece(pieces: Sequence[str], question: str) -> str:
    """The piece sharing the most words with ``question`` (for caller-given questions on long documents)."""
    qw = set(re.findall(r"\w+", question.lower()))
    return max(pieces, key=lambda p: len(qw & set(re.findall(r"\w+", p.lower()))))
