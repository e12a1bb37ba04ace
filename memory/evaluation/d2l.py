"""Doc-to-LoRA evaluation: ``pmem eval d2l [--quick] --json``.

On the same held-out questions (entities, numbers and haystack filler that training never saw) it compares
the base model with no context, with the document in its prompt, with a context-distilled LoRA (a small
subset; it is slow) and with the D2L adapter; then needle-in-a-haystack accuracy at 1x, 2x, 4x and 8x the
training chunk length (and, in the full run, a haystack longer than the model's 8192-token window).
Correct = the gold answer occurs in the greedy output (case-insensitive).

>>> # run(quick=True)["d2l"]["fact_acc"]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Sequence


from memory.hyper.d2l import DEFAULT_CHECKPOINT, checkpoint_sha256, internalize, load_checkpoint
from memory.prompts import QA_SYSTEM, context_prompt, parametric_prompt
from memory.training.d2l_data import FactGenerator, Sample, heldout_set

log = logging.getLogger(__name__)

MAX_NEW_TOKENS = 24  # in-context answers often restate the fact before the value


def _correct(text: str, gold: str) -> bool:
    return gold.lower() in text.lower()


def _generate(base: Any, prompts: Sequence[str], adapters: Any = None, bs: int = 16) -> list[str]:
    out: list[str] = []
    for i in range(0, len(prompts), bs):
        ad = adapters[i : i + bs] if isinstance(adapters, list) else adapters
        gens = base.generate(list(prompts[i : i + bs]), max_new_tokens=MAX_NEW_TOKENS, system=QA_SYSTEM, adapters=ad)
        out.extend(g.text for g in gens)
    return out


def _acc(texts: Sequence[str], samples: Sequence[Sample]) -> float:
    return sum(_correct(t, s.answer) for t, s in zip(texts, samples)) / max(1, len(samples))


def _haystack(gen: FactGenerator, n_tokens: int, tokenizer: Any) -> Sample:
    """A held-out haystack of about ``n_tokens`` tokens (filler lines measured with the real tokenizer)."""
    s = gen.niah(n_tokens_hint=n_tokens)
    ratio = n_tokens / max(1, len(tokenizer(s.document, add_special_tokens=False).input_ids))
    if abs(ratio - 1) > 0.1:
        s = gen.niah(n_tokens_hint=int(n_tokens * ratio))
    return s


def run(quick: bool = False, checkpoint: str | None = None, **_: Any) -> dict[str, Any]:
    """Side-by-side held-out comparison; returns a JSON-able dict (see the module docstring).

    >>> # run(quick=True)
    """
    from memory.models import load_base_model

    t_start = time.perf_counter()
    base = load_base_model()
    ckpt = Path(checkpoint) if checkpoint else DEFAULT_CHECKPOINT
    net = load_checkpoint(ckpt, base)
    chunk = net.config.chunk_tokens
    n_fact, n_multi = (16, 0) if quick else (100, 40)
    facts = heldout_set(n_fact, 0, max_facts=1, seed=777)
    multi = [FactGenerator("heldout", seed=778).sample(n_facts=3) for _ in range(n_multi)]
    result: dict[str, Any] = {"checkpoint": str(ckpt), "checkpoint_sha256": checkpoint_sha256(ckpt), "quick": quick,
                              "n_fact": n_fact, "n_multi_fact": n_multi, "chunk_tokens": chunk}

    def block(samples: list[Sample], tag: str) -> dict[str, float]:
        if not samples:
            return {}
        qs = [parametric_prompt(s.question) for s in samples]
        res = {f"no_context_{tag}": _acc(_generate(base, qs), samples)}
        res[f"in_context_{tag}"] = _acc(_generate(base, [context_prompt(s.question, [s.document]) for s in samples]), samples)
        t0 = time.perf_counter()
        ads = internalize(base, [s.document for s in samples], hypernet=net)
        res[f"d2l_internalize_s_per_doc_{tag}"] = (time.perf_counter() - t0) / len(samples)
        texts = _generate(base, qs, adapters=ads)
        res[f"d2l_{tag}"] = _acc(texts, samples)
        result.setdefault("examples", []).extend(
            {"q": s.question, "gold": s.answer, "d2l": t} for s, t in list(zip(samples, texts))[:3])
        return res

    result.update(block(facts, "fact"))
    log.info("d2l eval: single facts done at %.0f s", time.perf_counter() - t_start)
    result.update(block(multi, "multi_fact"))
    log.info("d2l eval: multi facts done at %.0f s", time.perf_counter() - t_start)
    result["d2l_over_in_context_fact"] = result["d2l_fact"] / max(result["in_context_fact"], 1e-9)

    # context distillation on a small subset (slow: gradient steps per document)
    try:
        from memory.distill import distill_document
    except ImportError:  # pragma: no cover - the runtime piece is optional here
        distill_document = None  # type: ignore[assignment]
    if distill_document is not None:
        sub = facts[: 1 if quick else 3]
        texts, t0 = [], time.perf_counter()
        cd_ads = []
        for s in sub:
            ad, _info = distill_document(base, s.document, **({"steps": 8, "max_questions": 4} if quick else {}))
            cd_ads.append(ad)
        cd_s = (time.perf_counter() - t0) / len(sub)
        texts = _generate(base, [parametric_prompt(s.question) for s in sub], adapters=cd_ads)
        t0 = time.perf_counter()
        d2l_ads = internalize(base, [s.document for s in sub], hypernet=net)
        d2l_s = (time.perf_counter() - t0) / len(sub)
        d2l_texts = _generate(base, [parametric_prompt(s.question) for s in sub], adapters=d2l_ads)
        result["context_distillation"] = {"n": len(sub), "acc": _acc(texts, sub), "seconds_per_doc": cd_s,
                                          "d2l_acc_same_subset": _acc(d2l_texts, sub), "d2l_seconds_per_doc": d2l_s,
                                          "speedup": cd_s / max(d2l_s, 1e-9)}
        log.info("d2l eval: context distillation done at %.0f s", time.perf_counter() - t_start)

    # needle in a haystack, by length (multiples of the training chunk length)
    gen = FactGenerator("heldout", seed=991)
    mults = [1, 2, 4, 8] + ([] if quick else [int(8192 * 1.25) // chunk + 1])
    n_per = 4 if quick else 20
    niah: dict[str, Any] = {}
    for m in mults:
        n_tok = m * chunk
        hay = [_haystack(gen, n_tok, base.tokenizer) for _ in range(n_per if m <= 8 else max(4, n_per // 4))]
        ads = internalize(base, [s.document for s in hay], hypernet=net)
        row: dict[str, Any] = {"tokens": n_tok, "n": len(hay), "chunks": int(ads[0].metadata["chunks"]),
                               "d2l": _acc(_generate(base, [parametric_prompt(s.question) for s in hay], adapters=ads), hay)}
        if (m == 1 or not quick) and n_tok + 64 <= 8192:
            row["in_context"] = _acc(_generate(base, [context_prompt(s.question, [s.document]) for s in hay], bs=4), hay)
        elif n_tok + 64 > 8192:
            row["in_context"] = None  # does not fit the 8192-token window
        niah[f"{m}x"] = row
        log.info("d2l eval: niah %sx done at %.0f s: %s", m, time.perf_counter() - t_start, row)
    result["niah"] = niah
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    return result
