"""Doc-to-LoRA evaluation: ``pmem eval d2l [--quick] --json``.

On the same held-out questions (entities, numbers and haystack filler that training never saw) it compares
the base model with no context, with the document in its prompt, with a context-distilled LoRA (a small
subset; it is slow) and with the D2L adapter; then needle-in-a-haystack accuracy at 1x, 2x, 4x and 8x the
training chunk length (and, in the full run, a haystack longer than the model's 8192-token window).

Two suites of issue 12 (accuracies with bootstrap CIs):

- ``many_fact``: documents of 3-10 facts from *held-out families* (:mod:`memory.training.d2l_families`), with
  distractors and reworded questions;
- ``prose``: questions over real passages of *held-out sources* (:mod:`memory.training.d2l_prose`: reworded and
  cloze questions), read from ``$PMEM_D2L_PROSE_CACHE`` (a cache built by ``python -m
  memory.training.d2l_prose``) or else from the standard library's docstrings on this machine. It also reports
  how many adapted answers are degenerate repetition loops (``memory.router.degenerate``): do no harm;
- ``prose_niah``: needles (held-out family facts) in haystacks of held-out real prose at 4x and 64x the chunk
  (full run: also beyond the 8192-token window).

Correct = the gold answer occurs in the greedy output (case-insensitive).

>>> # run(quick=True)["d2l"]["fact_acc"]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
    return sum(_correct(t, s.answer) for t, s in zip(texts, samples, strict=True)) / max(1, len(samples))


def _haystack(gen: FactGenerator, n_tokens: int, tokenizer: Any) -> Sample:
    """A held-out haystack of about ``n_tokens`` tokens (filler lines measured with the real tokenizer)."""
    s = gen.niah(n_tokens_hint=n_tokens)
    ratio = n_tokens / max(1, len(tokenizer(s.document, add_special_tokens=False).input_ids))
    if abs(ratio - 1) > 0.1:
        s = gen.niah(n_tokens_hint=int(n_tokens * ratio))
    return s


def _ci(flags: Sequence[bool]) -> dict[str, float]:
    from memory.evaluation.metrics import bootstrap_ci

    mean, low, high = bootstrap_ci([float(f) for f in flags])
    return {"acc": mean, "low": low, "high": high, "n": len(flags)}


def heldout_prose_passages(max_words: int = 130) -> tuple[list[Any], str]:
    """Held-out-source passages: from ``$PMEM_D2L_PROSE_CACHE`` when set, else the stdlib's docstrings."""
    import os

    from memory.training.d2l_prose import _docstring_passages, load_cache

    cache = os.environ.get("PMEM_D2L_PROSE_CACHE")
    if cache and Path(cache).is_file():
        ps, where = load_cache(cache, "heldout"), cache
    else:
        import sysconfig

        stdlib = Path(sysconfig.get_paths()["stdlib"])
        ps = [p for p in _docstring_passages(stdlib, "stdlib", max_files=2500) if p.split == "heldout"]
        where = f"{stdlib} docstrings"
    return [p for p in ps if len(p.text.split()) <= max_words], where


def suite_samples(kind: str, n: int, seed: int, passages: Sequence[Any] | None = None) -> list[Sample]:
    """Fixed held-out samples of a new suite: ``many_fact`` (3-10 facts) or ``prose`` (wh + cloze)."""
    if kind == "many_fact":
        from memory.training.d2l_families import FamilyGenerator

        g = FamilyGenerator("heldout", seed=seed)
        return [
            Sample(s.document, s.question, s.answer, "family")
            for s in (g.sample(n_facts=g.rng.randint(3, 10)) for _ in range(n))
        ]
    if kind == "prose":
        from memory.training.d2l_prose import ProseGenerator

        pg = ProseGenerator(list(passages or []), seed=seed)
        out: list[Sample] = []
        for _ in range(n):
            s = pg.sample(forms=("wh", "cloze"), weights=(0.5, 0.5))
            out.append(Sample(s.document, s.question, s.answer, "prose"))
        return out
    raise ValueError(kind)


def new_suites(
    base: Any,
    net: Any,
    quick: bool,
    log_start: float | None = None,
    sections: Sequence[str] = ("many_fact", "prose", "prose_niah"),
) -> dict[str, Any]:
    """The suites of issue 12 (see the module docstring) for one hypernetwork; JSON-able."""
    from memory.router import degenerate
    from memory.training.d2l_families import FamilyGenerator
    from memory.training.d2l_prose import ProseGenerator

    t0 = log_start or time.perf_counter()
    out: dict[str, Any] = {}
    passages, where = heldout_prose_passages()
    n = 12 if quick else 40
    for kind in [k for k in ("many_fact", "prose") if k in sections]:
        if kind == "prose" and not passages:
            out[kind] = {"available": False, "reason": f"no held-out prose passages in {where}"}
            continue
        samples = suite_samples(kind, n, seed=31337, passages=passages)
        qs = [parametric_prompt(s.question) for s in samples]
        ok = lambda texts, samples=samples: [_correct(t, s.answer) for t, s in zip(texts, samples, strict=True)]
        none_t = _generate(base, qs)
        ctx_t = _generate(base, [context_prompt(s.question, [s.document]) for s in samples], bs=8)
        ads = internalize(base, [s.document for s in samples], hypernet=net)
        d2l_t = _generate(base, qs, adapters=ads)
        block: dict[str, Any] = {"no_context": _ci(ok(none_t)), "in_context": _ci(ok(ctx_t)), "d2l": _ci(ok(d2l_t))}
        block["d2l_over_in_context"] = block["d2l"]["acc"] / max(block["in_context"]["acc"], 1e-9)
        block["degenerate"] = {
            "d2l": sum(bool(degenerate(t)) for t in d2l_t),
            "no_context": sum(bool(degenerate(t)) for t in none_t),
            "n": len(samples),
        }
        block["examples"] = [
            {"q": s.question, "gold": s.answer, "d2l": t, "in_context": c}
            for s, t, c in list(zip(samples, d2l_t, ctx_t, strict=True))[:4]
        ]
        if kind == "prose":
            block["sources"] = where
            block["n_sources"] = len({p.source for p in passages})
        out[kind] = block
        log.info(
            "d2l eval: %s done at %.0f s: d2l %.2f in-context %.2f none %.2f",
            kind,
            time.perf_counter() - t0,
            block["d2l"]["acc"],
            block["in_context"]["acc"],
            block["no_context"]["acc"],
        )
    if "prose_niah" in sections and passages:
        chunk = net.config.chunk_tokens
        pg = ProseGenerator(passages, seed=4711)
        fam = FamilyGenerator("heldout", seed=4711)
        from memory.training.d2l_mix import _needle

        mults = [4, 64] if quick else [4, 16, 64, int(8192 * 1.25) // chunk + 1]
        rows: dict[str, Any] = {}
        for m in mults:
            k = 4 if quick else (10 if m <= 16 else 5)
            items = []
            for _ in range(k):
                needles = [_needle(fam) for _ in range(3)]
                doc, q, a = pg.haystack(needles, int(m * chunk * 0.72))  # ~1.4 tokens per word of this prose
                items.append(Sample(doc, q, a, "haystack"))
            ads = internalize(base, [s.document for s in items], hypernet=net)
            texts = _generate(base, [parametric_prompt(s.question) for s in items], adapters=ads)
            toks = [len(base.tokenizer(s.document, add_special_tokens=False).input_ids) for s in items]
            rows[f"{m}x"] = {
                "tokens_mean": sum(toks) / len(toks),
                **_ci([_correct(t, s.answer) for t, s in zip(texts, items, strict=True)]),
                "needles_per_doc": 3,
            }
            log.info("d2l eval: prose niah %sx done at %.0f s: %s", m, time.perf_counter() - t0, rows[f"{m}x"])
        out["prose_niah"] = rows
    return out


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
    result: dict[str, Any] = {
        "checkpoint": str(ckpt),
        "checkpoint_sha256": checkpoint_sha256(ckpt),
        "quick": quick,
        "n_fact": n_fact,
        "n_multi_fact": n_multi,
        "chunk_tokens": chunk,
    }

    def block(samples: list[Sample], tag: str) -> dict[str, float]:
        if not samples:
            return {}
        qs = [parametric_prompt(s.question) for s in samples]
        res = {f"no_context_{tag}": _acc(_generate(base, qs), samples)}
        res[f"in_context_{tag}"] = _acc(
            _generate(base, [context_prompt(s.question, [s.document]) for s in samples]), samples
        )
        t0 = time.perf_counter()
        ads = internalize(base, [s.document for s in samples], hypernet=net)
        res[f"d2l_internalize_s_per_doc_{tag}"] = (time.perf_counter() - t0) / len(samples)
        texts = _generate(base, qs, adapters=ads)
        res[f"d2l_{tag}"] = _acc(texts, samples)
        result.setdefault("examples", []).extend(
            {"q": s.question, "gold": s.answer, "d2l": t} for s, t in list(zip(samples, texts, strict=True))[:3]
        )
        return res

    result.update(block(facts, "fact"))
    log.info("d2l eval: single facts done at %.0f s", time.perf_counter() - t_start)
    result.update(block(multi, "multi_fact"))
    log.info("d2l eval: multi facts done at %.0f s", time.perf_counter() - t_start)
    result["d2l_over_in_context_fact"] = result["d2l_fact"] / max(result["in_context_fact"], 1e-9)
    result.update(new_suites(base, net, quick, log_start=t_start))

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
            cd_options: dict[str, Any] = {"steps": 8, "max_questions": 4} if quick else {}
            ad, _info = distill_document(base, s.document, **cd_options)
            cd_ads.append(ad)
        cd_s = (time.perf_counter() - t0) / len(sub)
        texts = _generate(base, [parametric_prompt(s.question) for s in sub], adapters=cd_ads)
        t0 = time.perf_counter()
        d2l_ads = internalize(base, [s.document for s in sub], hypernet=net)
        d2l_s = (time.perf_counter() - t0) / len(sub)
        d2l_texts = _generate(base, [parametric_prompt(s.question) for s in sub], adapters=d2l_ads)
        result["context_distillation"] = {
            "n": len(sub),
            "acc": _acc(texts, sub),
            "seconds_per_doc": cd_s,
            "d2l_acc_same_subset": _acc(d2l_texts, sub),
            "d2l_seconds_per_doc": d2l_s,
            "speedup": cd_s / max(d2l_s, 1e-9),
        }
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
        row: dict[str, Any] = {
            "tokens": n_tok,
            "n": len(hay),
            "chunks": int(ads[0].metadata["chunks"]),
            "d2l": _acc(_generate(base, [parametric_prompt(s.question) for s in hay], adapters=ads), hay),
        }
        if (m == 1 or not quick) and n_tok + 64 <= 8192:
            row["in_context"] = _acc(
                _generate(base, [context_prompt(s.question, [s.document]) for s in hay], bs=4), hay
            )
        elif n_tok + 64 > 8192:
            row["in_context"] = None  # does not fit the 8192-token window
        niah[f"{m}x"] = row
        log.info("d2l eval: niah %sx done at %.0f s: %s", m, time.perf_counter() - t_start, row)
    result["niah"] = niah
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    return result
