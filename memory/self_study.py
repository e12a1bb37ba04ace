"""Self-study: internalize a document into a LoRA by distilling the model that reads it (the quality tier).

For every chunk of the document (a span the base model reads well in context) a varied set of synthetic
prompts is built, and the *teacher* (the base model with the chunk in its prompt) answers them. The
*student* (the same model with a trainable LoRA and no document) is trained to match the teacher's top-k
next-token distributions over those responses (KL, teacher-forced), as Cartridges' self-study and
Doc-to-LoRA's own objective do. Kinds of prompt (:data:`KINDS`):

- ``question``: natural questions built from the chunk's own sentences (who / what / when / how many /
  which default ...), answered by the teacher;
- ``model_question``: questions the base model writes itself with the chunk in context, answered by the
  teacher;
- ``summary``, ``list``, ``record``, ``paraphrase``, ``define``: requests to summarize the chunk's topic,
  restate it as a list or as key-value lines, paraphrase a sentence, define a term; answered by the teacher;
- ``recall`` (dense): "What does the text about <topic> say about <entity>?" with the chunk's *own*
  sentence as the response, and ``complete``: the first half of a sentence to finish with its second
  half. These are teacher-forced over the chunk's text (no generation: cheap, and every sentence is
  covered on purpose, not only the salient ones the model would ask about).

The budget scales with the document: prompts and steps per chunk, so every chunk of a long document is
covered. One adapter is trained on all chunks jointly by default; ``adapters="per-chunk"`` trains one per chunk
on that chunk's samples and concatenates them along rank (compared in ``bench/results/self-study``). A
fraction of the teacher-answered prompts is held back; :func:`fidelity` measures the adapter on them (token
agreement with the teacher, and how much of the teacher's answer the student's own greedy answer contains)
and the result is stored on the adapter row.

Cost on a CPU (where a paragraph must take seconds, not minutes): the teacher's distributions are computed with
the passage's KV cache shared by all its prompts; a training batch runs its short (question alone) and long
(question after its passage) samples as separate forward passes instead of padding all to the longest; and
with ``top_layers`` the LoRA lives only in the top layers (a third by default), so the layers below run once per sample
(:class:`memory.distill.FrozenPrefix`) and a step is forward and backward through the top only. The figures
that chose the defaults come from ``python -m bench.self_study_sweep`` (dev split).

The synthetic data (prompts, responses, kinds, chunk of each) is returned as JSON-ready records so that it
can be stored and later reused, for instance to meta-train Doc-to-LoRA.

>>> cfg = SelfStudyConfig()
>>> cfg.rank, "mlp.down_proj" in cfg.target_modules
(8, True)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from memory.distill import (
    _answer_logits,
    _chunks_by_tokens,
    _entities,
    fit_kl,
    save_atomic,
    split_sentences,
    student_prompt,
    teacher_prompt,
    teacher_topk,
)
from memory.errors import ValidationError
from memory.lora.adapter import LoraAdapter, concat
from memory.lora.apply import apply_lora

__all__ = [
    "KINDS",
    "SelfStudyConfig",
    "SelfStudyResult",
    "SyntheticPrompt",
    "build_prompts",
    "fidelity",
    "self_study",
]

log = logging.getLogger(__name__)

KINDS = ("question", "model_question", "summary", "list", "record", "paraphrase", "define", "recall", "complete")
GENERATED = frozenset({"question", "model_question", "summary", "list", "record", "paraphrase", "define"})

ALL_LINEAR = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)


@dataclass(frozen=True)
class SelfStudyConfig:
    """The recipe. Defaults were chosen on the dev split of ``bench/data/realprose`` (manual pages)."""

    rank: int = 8
    target_modules: tuple[str, ...] = ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj", "mlp.down_proj")
    top_layers: float = 1 / 3  # share of decoder layers, from the top, that carry the LoRA (the rest run once)
    chunk_tokens: int = 384  # the span the teacher sees in context
    generated_per_chunk: int = 8  # teacher-answered prompts per chunk (questions first)
    model_questions_per_chunk: int = 2  # of those, questions the base model writes itself
    dense_per_chunk: int = 12  # teacher-forced recall / complete prompts per chunk (cheap)
    in_context_per_chunk: int = 2  # teacher-answered samples also trained with the chunk in the student's prompt
    in_context_distractors: int = 0  # other chunks of the document beside it there, in random order (as retrieval
    # shows passages: RAFT), so that an adapter of a long document learns to read two passages, not only its own
    steps_per_chunk: int = 40
    min_steps: int = 40
    max_steps: int = 600
    batch_size: int = 8
    lr: float = 2e-3
    top_k: int = 32
    max_answer_tokens: int = 32
    holdout: int = 2  # teacher-answered prompts per document held back for fidelity (at least one per chunk cap)
    seed: int = 0
    adapters: str = "joint"  # "joint": one LoRA on every chunk; "per-chunk": one per chunk, concatenated along rank

    def __post_init__(self) -> None:
        for name in ("rank", "chunk_tokens", "steps_per_chunk", "batch_size", "top_k", "max_answer_tokens"):
            if int(getattr(self, name)) < 1:
                raise ValidationError(f"self-study {name} must be >= 1, got {getattr(self, name)!r}")
        if not 0 < self.lr < 1:
            raise ValidationError(f"self-study lr must be in (0, 1), got {self.lr!r}")
        if not 0 < self.top_layers <= 1:
            raise ValidationError(f"self-study top_layers must be in (0, 1], got {self.top_layers!r}")
        if int(self.in_context_distractors) < 0 or int(self.in_context_per_chunk) < 0:
            raise ValidationError("self-study in_context_per_chunk and in_context_distractors must be >= 0")
        if self.adapters not in ("joint", "per-chunk"):
            raise ValidationError(f"self-study adapters must be 'joint' or 'per-chunk', got {self.adapters!r}")

    def first_layer(self, n_layers: int) -> int:
        """The lowest decoder layer that gets the LoRA in a model of ``n_layers`` (at least the top one).

        >>> SelfStudyConfig().first_layer(30), SelfStudyConfig(top_layers=1).first_layer(30)
        (20, 0)
        """
        return n_layers - max(1, round(n_layers * self.top_layers))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


@dataclass
class SyntheticPrompt:
    """One training (or probe) sample: the student's prompt, the teacher's response, and where it came from."""

    kind: str
    chunk: int
    prompt: str
    response: str | None = None  # None: the teacher writes it
    heldout: bool = False


@dataclass
class SelfStudyResult:
    adapter: LoraAdapter
    data: list[dict[str, Any]]  # the synthetic data, JSON-ready
    data_json: bytes  # ``data`` serialized once (sorted keys, UTF-8): what is stored and hashed
    counts: dict[str, int]  # per kind, plus "chunks", "samples", "heldout"
    steps: int
    loss_first: float
    loss_last: float
    seconds: float
    teacher_seconds: float
    fidelity: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def data_sha256(self) -> str:
        return hashlib.sha256(self.data_json).hexdigest()

    def provenance(self) -> dict[str, Any]:
        """What an adapter row keeps about how it was made (no tensors, no data)."""
        return {
            "method": "self-study",
            "teacher": "base model with the chunk in context",
            "synthetic_counts": self.counts,
            "synthetic_sha256": self.data_sha256,
            "steps": self.steps,
            "loss_first": round(self.loss_first, 4),
            "loss_last": round(self.loss_last, 4),
            "seconds": round(self.seconds, 2),
            "teacher_seconds": round(self.teacher_seconds, 2),
            "fidelity": self.fidelity,
            "config": self.config,
        }


# ---------------------------------------------------------------------------- synthetic prompts
_NUM = re.compile(r"\b(\d[\d,.]*)\s*([a-z]+)?")
_DEFAULT = re.compile(r"\b(?:defaults? to|default (?:value )?is|by default,? (?:is|uses))\s+(\S+)", re.IGNORECASE)
_COPULA = re.compile(r"^(?P<subj>.{3,90}?)\s+(?P<verb>is|are|was|were)\s+(?P<rest>.+)$")
_OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")
_TERM = re.compile(r"\b([A-Za-z][\w-]{3,})\b")
_STOPWORDS = frozenset(
    "a an the is are was were be been of to in on at by for with from as and or but not no it its this that these "
    "those there their they them he she his her we you your our which who whom what when where why how can may "
    "will would should could must do does did has have had if then than so such also only into onto over under "
    "any all each every some most more other one two".split()
)
_MODEL_QUESTION_FOCUS = (
    "a number or a quantity",
    "a name",
    "what something does",
    "a condition or a rule",
    "a default or a setting",
    "a reason",
)


def _lower_first(s: str) -> str:
    return s[0].lower() + s[1:] if s and not (len(s) > 1 and s[1].isupper()) else s


def _topic(chunk: str) -> str:
    """A short name for what the chunk is about: its most frequent name, else its first words."""
    names = _entities(chunk)
    if names:
        flat = " ".join(chunk.split())  # a name is its words joined by one space, wherever the text broke them
        counts = {n: flat.count(n) for n in names}
        return max(names, key=lambda n: (counts[n], -flat.find(n)))
    words = [w for w in re.findall(r"[\w-]+", chunk) if w.lower() not in _STOPWORDS]
    return " ".join(words[:3]) or "this topic"


def _sentence_questions(sent: str, topic: str) -> list[str]:
    """Natural questions one sentence answers (no model needed)."""
    s = sent.strip().rstrip(".!?")
    out: list[str] = []
    m = _COPULA.match(s)
    if m and len(m.group("subj").split()) <= 12:
        subj = _lower_first(m.group("subj"))
        out.append(f"What {m.group('verb')} {subj}?")
    m = _DEFAULT.search(s)
    if m:
        subj = " ".join(s[: m.start()].split()[-6:]).rstrip(",")
        if subj:
            out.append(f"What is the default of {subj}?")
    out.extend(f"What does the {opt} option of {topic} do?" for opt in _OPTION.findall(s)[:1])
    m = _NUM.search(s)
    if m and m.group(2) and m.group(2) not in _STOPWORDS:
        out.append(f"How many {m.group(2)} does {topic} involve, according to the text about it?")
    out.extend(f"What is {name} in connection with {topic}?" for name in _entities(s)[:1] if name != topic)
    if not out:
        out.append(f"What does the text about {topic} say about {_key_phrase(s)}?")
    return out


def _key_phrase(sent: str) -> str:
    words = [w for w in re.findall(r"[\w-]+", sent) if w.lower() not in _STOPWORDS]
    return " ".join(words[:4]) if words else "it"


def build_prompts(chunks: Sequence[str], cfg: SelfStudyConfig, rng: random.Random) -> list[SyntheticPrompt]:
    """The synthetic prompts of every chunk, within the per-chunk budget (model questions are added later)."""
    out: list[SyntheticPrompt] = []
    for ci, chunk in enumerate(chunks):
        topic = _topic(chunk)
        sents = [s for s in split_sentences(chunk) if len(s.split()) >= 4]
        if not sents:
            sents = [chunk.strip()]
        # teacher-answered: sentence questions round-robin (every sentence first), then the task kinds
        per_sentence = [_sentence_questions(s, topic) for s in sents]
        questions = [qs[0] for qs in per_sentence] + [q for qs in per_sentence for q in qs[1:]]
        tasks = [
            SyntheticPrompt("summary", ci, f"Summarize what you know about {topic}."),
            SyntheticPrompt("list", ci, f"List the key facts about {topic} as short bullet points."),
            SyntheticPrompt("record", ci, f"Give the facts about {topic} as key: value lines."),
        ]
        terms = [t for t in dict.fromkeys(_entities(chunk) + _OPTION.findall(chunk)) if t != topic]
        if terms:
            tasks.append(SyntheticPrompt("define", ci, f"In the context of {topic}, what is {rng.choice(terms)}?"))
        long_sents = [s for s in sents if len(s.split()) >= 8]
        if long_sents:
            tasks.append(
                SyntheticPrompt(
                    "paraphrase", ci, f'Explain in other words what this means for {topic}: "{rng.choice(long_sents)}"'
                )
            )
        n_gen = max(1, cfg.generated_per_chunk - cfg.model_questions_per_chunk)
        n_q = max(1, n_gen - min(len(tasks), max(1, n_gen // 3)))
        gen = [SyntheticPrompt("question", ci, q) for q in dict.fromkeys(questions)][:n_q]
        gen += tasks[: n_gen - len(gen)]
        out.extend(gen)
        # teacher-forced over the chunk's own text: recall a sentence, finish a sentence
        dense = [
            SyntheticPrompt("recall", ci, f"What does the text about {topic} say about {_key_phrase(s)}?", s)
            for s in sents
        ]
        for s in sents:
            words = s.split()
            if len(words) >= 8:
                k = max(3, len(words) // 2)
                head, tail = " ".join(words[:k]), " ".join(words[k:])
                dense.append(SyntheticPrompt("complete", ci, f'About {topic}, finish the sentence: "{head} ..."', tail))
        out.extend(dense[: cfg.dense_per_chunk])
    return out


def _model_questions(base: Any, chunks: Sequence[str], cfg: SelfStudyConfig, seed: int) -> list[SyntheticPrompt]:
    """Questions the base model writes with the chunk in context (sampled, one focus each)."""
    if cfg.model_questions_per_chunk <= 0:
        return []
    asks: list[tuple[int, list[int]]] = []
    for ci, chunk in enumerate(chunks):
        for j in range(cfg.model_questions_per_chunk):
            focus = _MODEL_QUESTION_FOCUS[(ci + j) % len(_MODEL_QUESTION_FOCUS)]
            user = (
                "Read the text and write one question about it, about "
                f"{focus}, that the text answers. Name what the question is about. Write only the question."
                f"\n\nText:\n{chunk.strip()}"
            )
            asks.append((ci, base.chat_ids(user)))
    out: list[SyntheticPrompt] = []
    for i in range(0, len(asks), 8):
        gens = base.generate(
            [ids for _, ids in asks[i : i + 8]], max_new_tokens=32, temperature=0.7, top_p=0.9, seed=seed + i
        )
        for (ci, _), g in zip(asks[i : i + 8], gens, strict=True):
            q = g.text.strip().split("\n")[0].strip().strip('"')
            if q.endswith("?") and 3 <= len(q.split()) <= 30:
                out.append(SyntheticPrompt("model_question", ci, q))
    return out


def _ids(base: Any, text: str, eos: int | None) -> list[int]:
    return base.encode(" " + text.strip())[:256] + ([eos] if eos is not None else [])


# ---------------------------------------------------------------------------- training
def _teach(
    base: Any, text: str, cfg: SelfStudyConfig, progress: Callable[[str, int, int], None] | None
) -> dict[str, Any]:
    """The synthetic data of ``text`` answered by the teacher, and the teacher's top-k over the training
    samples' responses: ``{"chunks", "samples" (as dicts), "teacher" (one (log-probs, ids) pair per training
    sample)}``."""
    rng = random.Random(cfg.seed)
    chunks = _chunks_by_tokens(base, text, cfg.chunk_tokens)
    samples = build_prompts(chunks, cfg, rng)
    samples += _model_questions(base, chunks, cfg, cfg.seed)
    # hold back some teacher-answered questions (never the only one of a chunk) to measure fidelity
    generated = [s for s in samples if s.kind in GENERATED]
    questions = [s for s in generated if s.kind in ("question", "model_question")]
    rng.shuffle(questions)
    for s in questions[: min(cfg.holdout, max(0, len(questions) - len(chunks)))]:
        s.heldout = True

    # the teacher answers, greedy, the chunk in context
    eos = base.tokenizer.eos_token_id
    todo = [s for s in samples if s.response is None]
    total = len(todo)
    for i in range(0, total, cfg.batch_size):
        batch = todo[i : i + cfg.batch_size]
        gens = base.generate(
            [teacher_prompt(base, chunks[s.chunk], s.prompt) for s in batch], max_new_tokens=cfg.max_answer_tokens
        )
        for s, g in zip(batch, gens, strict=True):
            s.response = g.text.strip()
        if progress:
            progress("teacher", min(i + cfg.batch_size, total), total)
    samples = [s for s in samples if s.response]
    if not samples:
        raise ValidationError("the teacher produced no responses for this document")
    train = [s for s in samples if not s.heldout]
    t_prompts = [teacher_prompt(base, chunks[s.chunk], s.prompt) for s in train]
    responses = [_ids(base, s.response or "", eos) for s in train]
    teacher = teacher_topk(base, t_prompts, responses, cfg.top_k)
    return {"chunks": chunks, "samples": [asdict(s) for s in samples], "teacher": teacher}


def _load_teacher(state_dir: Path | None) -> dict[str, Any] | None:
    path = state_dir / "teacher.pt" if state_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return dict(torch.load(path, weights_only=True))
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as e:  # torn or foreign: redo
        log.warning("self-study: ignoring unreadable state %s (%s)", path, e)
        return None


def in_context_prompt(
    base: Any, chunks: Sequence[str], sample: SyntheticPrompt, distractors: int, rng: random.Random
) -> list[int] | None:
    """The student's prompt of an in-context sample with ``distractors`` other chunks of the document beside the
    sample's own, all in random order, in the format a retrieval query uses; ``None`` when there is no other
    chunk to add (the student then reads the teacher's prompt, its own chunk alone)."""
    others = [c for c in range(len(chunks)) if c != sample.chunk]
    if distractors < 1 or not others:
        return None
    passages = [chunks[c] for c in [sample.chunk, *rng.sample(others, min(distractors, len(others)))]]
    rng.shuffle(passages)
    return teacher_prompt(base, passages, sample.prompt)


def self_study(
    base: Any,
    text: str,
    config: SelfStudyConfig | None = None,
    *,
    progress: Callable[[str, int, int], None] | None = None,
    work_dir: str | os.PathLike[str] | None = None,
) -> SelfStudyResult:
    """Internalize ``text`` into one LoRA adapter by self-study (see the module docstring).

    ``progress`` is called as ``progress(stage, done, total)`` with stage ``teacher`` then ``train``.
    ``work_dir``: where a run keeps its state (the teacher's data once made, then the training state every
    few steps), so that a run of the same text, recipe and model killed half-way resumes there; the state is
    removed when the run ends.
    """
    if not text or not text.strip():
        raise ValidationError("self-study needs a non-empty document text")
    cfg = config or SelfStudyConfig()
    t_start = time.perf_counter()
    state_dir = None
    if work_dir is not None:
        key = hashlib.sha256(
            json.dumps([text, cfg.as_dict(), str(base.fingerprint)], sort_keys=True).encode("utf-8")
        ).hexdigest()[:24]
        state_dir = Path(work_dir) / f"self-study-{key}"
    taught = _load_teacher(state_dir)
    if taught is None:
        taught = _teach(base, text, cfg, progress)
        if state_dir is not None:
            save_atomic(taught, state_dir / "teacher.pt")
    else:
        log.info("self-study: the teacher's data of an interrupted run reused from %s", state_dir)
    chunks, samples, teacher = taught["chunks"], [SyntheticPrompt(**d) for d in taught["samples"]], taught["teacher"]
    teacher_s = time.perf_counter() - t_start
    eos = base.tokenizer.eos_token_id
    train = [s for s in samples if not s.heldout]
    t_prompts = [teacher_prompt(base, chunks[s.chunk], s.prompt) for s in train]
    s_prompts = [student_prompt(base, s.prompt) for s in train]
    responses = [_ids(base, s.response or "", eos) for s in train]
    teacher = list(teacher)

    owner = [s.chunk for s in train]  # the chunk of every training sample
    # In-context samples: the student reads the chunk too and must answer as the teacher does, so the adapter
    # learns to leave the model's reading of a retrieved passage alone (hybrid must not spoil retrieval). Their
    # teacher distributions are those already computed (same prompt); only the student's forward is longer.
    per_chunk: dict[int, int] = {}
    rng = random.Random(cfg.seed + 1)
    for i, s in enumerate(train):
        if s.kind in GENERATED and per_chunk.get(s.chunk, 0) < cfg.in_context_per_chunk:
            per_chunk[s.chunk] = per_chunk.get(s.chunk, 0) + 1
            s_prompts.append(in_context_prompt(base, chunks, s, cfg.in_context_distractors, rng) or t_prompts[i])
            responses.append(responses[i])
            teacher.append(teacher[i])
            owner.append(s.chunk)

    weights, losses, steps = _train(base, cfg, s_prompts, responses, teacher, owner, len(chunks), state_dir, progress)
    data = [asdict(s) for s in samples]
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")
    counts = {k: sum(1 for s in samples if s.kind == k) for k in KINDS}
    counts.update(
        chunks=len(chunks),
        samples=len(samples),
        heldout=sum(s.heldout for s in samples),
        in_context=sum(per_chunk.values()),
    )
    adapter = LoraAdapter(
        weights,
        base.fingerprint,
        {"kind": "knowledge", "method": "self-study", "rank": str(cfg.rank), "steps": str(steps)},
    )
    result = SelfStudyResult(
        adapter=adapter,
        data=data,
        data_json=blob,
        counts=counts,
        steps=steps,
        loss_first=losses[0],
        loss_last=float(sum(losses[-5:]) / len(losses[-5:])),
        seconds=0.0,
        teacher_seconds=teacher_s,
        config=cfg.as_dict(),
    )
    probes = [s for s in samples if s.heldout]
    if probes:
        result.fidelity = fidelity(base, adapter, [(chunks[s.chunk], s.prompt, s.response or "") for s in probes])
    result.seconds = time.perf_counter() - t_start
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
    log.info(
        "self-study: %d chunks, %d samples, %d steps, loss %.3f -> %.3f, %.1f s",
        len(chunks),
        len(samples),
        steps,
        result.loss_first,
        result.loss_last,
        result.seconds,
    )
    return result


def _train(
    base: Any,
    cfg: SelfStudyConfig,
    s_prompts: list[list[int]],
    responses: list[list[int]],
    teacher: list[Any],
    owner: list[int],
    n_chunks: int,
    state_dir: Path | None,
    progress: Callable[[str, int, int], None] | None,
) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[float], int]:
    """The LoRA factors, every step's loss and the step count: one adapter trained on every sample
    (``joint``), or (``per-chunk``) one per chunk on that chunk's samples, concatenated along rank so that
    their deltas add up. A finished chunk's factors are kept in ``state_dir`` until the run ends."""
    first_layer = cfg.first_layer(base.model.config.num_hidden_layers)

    def fit(idx: list[int], steps: int, seed: int, checkpoint: Path | None, done: int, total: int) -> Any:
        return fit_kl(
            base,
            [s_prompts[i] for i in idx],
            [responses[i] for i in idx],
            [teacher[i] for i in idx],
            rank=cfg.rank,
            target_modules=cfg.target_modules,
            steps=steps,
            lr=cfg.lr,
            batch_size=cfg.batch_size,
            seed=seed,
            progress=(lambda step, _n, _loss: progress("train", done + step, total)) if progress else None,
            checkpoint=checkpoint,
            first_layer=first_layer,
        )

    if cfg.adapters == "joint" or n_chunks == 1:
        steps = int(min(cfg.max_steps, max(cfg.min_steps, cfg.steps_per_chunk * n_chunks)))
        every = list(range(len(responses)))
        weights, losses = fit(every, steps, cfg.seed, state_dir / "train.pt" if state_dir else None, 0, steps)
        return weights, losses, steps
    steps = int(min(cfg.max_steps, max(cfg.min_steps, cfg.steps_per_chunk)))  # per chunk
    parts, losses = [], []
    for c in range(n_chunks):
        kept = state_dir / f"chunk-{c}.pt" if state_dir is not None else None
        if kept is not None and kept.exists():
            w, ls = torch.load(kept, weights_only=True)
        else:
            idx = [i for i, o in enumerate(owner) if o == c]
            ckpt = state_dir / f"train-{c}.pt" if state_dir is not None else None
            w, ls = fit(idx, steps, cfg.seed + c, ckpt, c * steps, n_chunks * steps)
            if kept is not None:
                save_atomic((w, ls), kept)
        parts.append(LoraAdapter(w, base.fingerprint))
        losses += ls
    return concat(parts).weights, losses, steps * n_chunks


# ---------------------------------------------------------------------------- fidelity
_WORDS = re.compile(r"[\w]+(?:[-'.][\w]+)*")


def _content(text: str) -> list[str]:
    return [w for w in _WORDS.findall(text.lower()) if w not in _STOPWORDS]


def fidelity(
    base: Any, adapter: LoraAdapter, probes: Sequence[tuple[str, str, str]], *, max_new_tokens: int = 32
) -> dict[str, float]:
    """How well ``adapter`` stands in for the chunk on held-back probes ``(chunk, question, teacher answer)``.

    - ``agreement``: share of the teacher's answer tokens the student (adapter, no document) predicts as its
      own top-1, teacher-forced (``agreement_base``: the same without the adapter);
    - ``containment``: mean share of the teacher answer's content words found in the student's greedy
      answer (``containment_base`` without the adapter).
    """
    if not probes:
        return {}
    eos = base.tokenizer.eos_token_id
    s_prompts = [student_prompt(base, q) for _, q, _ in probes]
    t_prompts = [teacher_prompt(base, c, q) for c, q, _ in probes]
    answers = [_ids(base, a, eos) for _, _, a in probes]
    with torch.inference_mode():
        teacher_top1 = _answer_logits(base, t_prompts, answers).argmax(-1)
        base_top1 = _answer_logits(base, s_prompts, answers).argmax(-1)
        with apply_lora(base, adapter):
            student_top1 = _answer_logits(base, s_prompts, answers).argmax(-1)
    n = len(s_prompts)  # with and without the adapter in one batch (per-row adapters): one decode loop, not two
    gens = base.generate(s_prompts * 2, max_new_tokens=max_new_tokens, adapters=[adapter] * n + [None] * n)
    gens_ad, gens_base = gens[:n], gens[n:]

    def contained(gens: Sequence[Any]) -> float:
        shares = []
        for g, (_, _, a) in zip(gens, probes, strict=True):
            want = set(_content(a))
            if want:
                shares.append(len(want & set(_content(g.text))) / len(want))
        return float(sum(shares) / len(shares)) if shares else 0.0

    return {
        "probes": float(len(probes)),
        "agreement": round(float((student_top1 == teacher_top1).float().mean()), 4),
        "agreement_base": round(float((base_top1 == teacher_top1).float().mean()), 4),
        "containment": round(contained(gens_ad), 4),
        "containment_base": round(contained(gens_base), 4),
    }
