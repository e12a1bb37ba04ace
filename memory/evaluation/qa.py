"""``pmem eval qa``: the same questions through every way of giving the model a document, side by side.

Arms (all on the same items, all with the prompts of :mod:`memory.prompts`):

- ``none``: the base model alone, no document (what it knows anyway);
- ``context``: the whole document in the prompt, truncated from the end to the model's window;
- ``rag``: ``ParametricMemory.query(mode="retrieval")``, top-``k`` chunks in the prompt;
- ``d2l``: the Doc-to-LoRA adapter (``internalize(method="d2l")``, ``query(mode="parametric")``);
  unavailable, with the reason, when no checkpoint fits the base model;
- ``cd``: a context-distillation adapter (``method="cd"``, gradient steps per document: slow, so
  ``cd_items`` limits how many items it runs on);
- ``self-study``: the quality tier (``method="self-study"``, :mod:`memory.self_study`);
- ``hybrid``: adapter plus retrieved chunks; ``auto``: the router decides (its choices are counted). Both use
  the self-study adapter when that arm runs, else Doc-to-LoRA's when a checkpoint fits, else CD's.

Each distinct document (set) is stored and internalized once per arm, however many questions it has; its
one-off cost is counted once.

Per arm: exact match, token F1 and answer-contains with bootstrap CIs; the one-off internalization cost
(adapter making, or chunk embedding for retrieval) per document; per query prefill and total latency,
prompt tokens, peak RSS; bytes stored per document. Paired bootstrap CIs compare arms on shared items.

The documents go into a throw-away store (its own SQLite file and blob directory); the base model is the
configured one. ``pmem eval qa --quick`` runs the built-in suites (made-up facts and needles);
``pmem eval qa --data FILE.jsonl`` runs the user's items (see :mod:`memory.evaluation.suites`).

>>> result = run(quick=True, arms=["none", "context", "rag"])   # doctest: +SKIP
>>> result["arms"]["context"]["contains"]["mean"]                 # doctest: +SKIP
0.8
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from memory import prompts
from memory.config import Settings
from memory.errors import PMemError, ValidationError
from memory.evaluation import metrics, suites
from memory.evaluation.progress import ProgressBar
from memory.evaluation.runtime import kv_bytes_per_token, measure
from memory.router import RouterConfig

log = logging.getLogger(__name__)

ARMS = ("none", "context", "rag", "d2l", "cd", "self-study", "hybrid", "auto")
ADAPTER_ARMS = ("d2l", "cd", "self-study")
METRIC_NAMES = tuple(metrics.METRICS)


def _doc_key(item_id: str, j: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.:@+=-]", "_", item_id)[:200] or "item"
    return f"{safe}.d{j}" if safe[0].isalnum() or safe[0] == "_" else f"i{safe}.d{j}"


def _check_arms(arms: Sequence[str] | str | None) -> list[str]:
    if arms is None:
        return list(ARMS)
    if isinstance(arms, str):
        arms = [a.strip() for a in arms.split(",") if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise ValidationError(f"unknown arm(s) {bad or arms!r}; choose from {', '.join(ARMS)}")
    return list(dict.fromkeys(arms))


def _configure_cd(mem: Any, **config: Any) -> None:
    """Use a cheaper context-distillation setting for this run's throw-away store (fewer steps/questions)."""
    mem.configure_internalizer("cd", **config)


def _internalize(mem: Any, doc_id: str, ns: str, method: str) -> Any:
    return mem.internalize(doc_id, namespace=ns, method=method)


def _d2l_unavailable(mem: Any, checkpoint: str | None) -> str | None:
    """Why the D2L arm cannot run, or None when a checkpoint fits the base model."""
    from memory.internalizers import DEFAULT_D2L, d2l_checkpoint_for

    try:
        path = d2l_checkpoint_for(mem.base_model, checkpoint)
    except PMemError as e:
        return str(e)
    if path is None:
        return (
            f"no Doc-to-LoRA checkpoint for base model {mem.base_model.fingerprint!r} in "
            f"{checkpoint or DEFAULT_D2L}; train one with `pmem train d2l`"
        )
    return None


class _Runner:
    """Runs the arms of one item after another and collects one row per (item, arm)."""

    def __init__(self, mem: Any, *, k: int, max_new_tokens: int, window: int, checkpoint: str | None) -> None:
        self.mem = mem
        self.base = mem.base_model
        self.k = k
        self.max_new_tokens = max_new_tokens
        self.window = window
        self.checkpoint = checkpoint
        self.kv_per_token = kv_bytes_per_token(self.base)
        self.rows: list[dict[str, Any]] = []
        self.costs: dict[str, list[dict[str, Any]]] = {a: [] for a in ARMS}  # one-off, per document
        self.failures: dict[str, list[str]] = {a: [] for a in ARMS}
        self.stores: dict[tuple[str, str], tuple[str, list[str]]] = {}  # (documents' digest, arm) -> (ns, keys)
        self.failed_stores: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ arms
    def _direct(self, user: str) -> tuple[str, int, int]:
        ids = self.base.chat_ids(user, system=prompts.QA_SYSTEM)
        gen = self.base.generate([ids], max_new_tokens=self.max_new_tokens)[0]
        return gen.text.strip(), gen.prompt_tokens, gen.completion_tokens

    def _record(self, item: suites.Item, arm: str, fn: Callable[[], dict[str, Any]]) -> None:
        try:
            with measure(self.base) as m:
                out = fn()
        except PMemError as e:
            log.warning("item %s arm %s failed: %s", item.id, arm, e)
            self.failures[arm].append(f"{item.id}: {e}")
            return
        answer = out.pop("answer")
        prompt_tokens = out.pop("prompt_tokens")
        completion = out.pop("completion_tokens")
        row = {
            "item": item.id,
            "arm": arm,
            "question": item.question,
            "answers": item.answers,
            "prediction": answer,
            **metrics.score(answer, item.answers),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "prefill_ms": m.prefill_ms,
            "total_ms": m.total_ms,
            "kv_cache_bytes": (prompt_tokens + completion) * self.kv_per_token,
            "peak_rss_bytes": m.peak_rss_bytes,
            **out,
        }
        self.rows.append(row)

    def run_item(self, i: int, item: suites.Item, arms: list[str], methods: list[str], preferred: str | None) -> None:
        mem = self.mem
        keys = [_doc_key(item.id, j) for j in range(len(item.documents))]
        doc_bytes = sum(len(d.encode("utf-8")) for d in item.documents)
        if "none" in arms:
            self._record(
                item,
                "none",
                lambda: dict(
                    zip(
                        ("answer", "prompt_tokens", "completion_tokens"),
                        self._direct(prompts.parametric_prompt(item.question)),
                        strict=True,
                    )
                ),
            )
        if "context" in arms:

            def context() -> dict[str, Any]:
                text = "\n\n".join(d.strip() for d in item.documents)
                budget = self.window - self.base.count_tokens(item.question) - 48
                ids = self.base.encode(text)
                truncated = len(ids) > budget
                if truncated:
                    text = self.base.decode(ids[: max(budget, 0)])
                answer, pt, ct = self._direct(prompts.context_prompt(item.question, [text]))
                return {"answer": answer, "prompt_tokens": pt, "completion_tokens": ct, "truncated": truncated}

            self._record(item, "context", context)
            self.costs["context"].append({"ms": 0.0, "bytes": doc_bytes / len(keys)})
        digest = hashlib.sha256("\x00".join(item.documents).encode("utf-8")).hexdigest()[:16]
        tag = f"{i:04d}"
        namespaces: dict[str, str] = {}
        if "rag" in arms:
            cached = self.stores.get((digest, "rag"))
            if cached is None:
                cached = (self._store(item, keys, f"qa{tag}-p", "rag"), keys)
                self.stores[(digest, "rag")] = cached
            namespaces["rag"] = cached[0]
            self._record(item, "rag", lambda: self._query(item, namespaces["rag"], "retrieval", None))
        adapter_keys: dict[str, list[str]] = {}
        for method in methods:
            cached = self.stores.get((digest, method))
            if cached is None and (digest, method) not in self.failed_stores:
                ns = f"qa{tag}-{method}"
                made: list[dict[str, Any]] = []
                try:
                    self._store(item, keys, ns, None)
                    for key, text in zip(keys, item.documents, strict=True):
                        t0 = time.perf_counter()
                        info = _internalize(mem, key, ns, method)
                        made.append(
                            {
                                "ms": (time.perf_counter() - t0) * 1000,
                                "bytes": int(info.size_bytes or 0),
                                "rank": info.rank,
                                "tokens": self.base.count_tokens(text),
                                "fidelity": info.fidelity,
                            }
                        )
                except PMemError as e:
                    log.warning("item %s: internalizing with %s failed: %s", item.id, method, e)
                    self.failures[method].append(f"{item.id}: {e}")
                    self.failed_stores[(digest, method)] = str(e)
                    continue
                self.costs[method] += made
                cached = (ns, keys)
                self.stores[(digest, method)] = cached
                if method == preferred:  # hybrid and auto keep the adapter and the retrieval index
                    t0 = time.perf_counter()
                    self._warm_index(ns, item.question)
                    index_ms = (time.perf_counter() - t0) * 1000 / len(keys)
                    dim = self.mem.chunk_index.embedder.dim
                    for key, text, cost in zip(keys, item.documents, made, strict=True):
                        chunks = self.mem.get(key, namespace=ns).version.chunk_count
                        for arm in ("hybrid", "auto"):
                            self.costs[arm].append(
                                {
                                    "ms": cost["ms"] + index_ms,
                                    "bytes": cost["bytes"] + len(text.encode("utf-8")) + chunks * dim * 4,
                                }
                            )
            if cached is None:
                continue
            namespaces[method], adapter_keys[method] = cached
            if method in arms:
                self._record(item, method, functools.partial(self._query, item, cached[0], "parametric", cached[1]))
        shared_ns = namespaces.get(preferred or "")  # the preferred method's namespace serves hybrid and auto
        if shared_ns is None:
            return
        if "hybrid" in arms:
            self._record(
                item, "hybrid", functools.partial(self._query, item, shared_ns, "hybrid", adapter_keys[preferred or ""])
            )
        if "auto" in arms:
            self._record(item, "auto", functools.partial(self._query, item, shared_ns, "auto", None))

    # ------------------------------------------------------------------ helpers
    def _store(self, item: suites.Item, keys: list[str], ns: str, index_cost_arm: str | None) -> str:
        for key, text in zip(keys, item.documents, strict=True):
            self.mem.add(text, document_id=key, namespace=ns)
        if index_cost_arm:
            t0 = time.perf_counter()
            self._warm_index(ns, item.question)
            ms = (time.perf_counter() - t0) * 1000
            dim = self.mem.chunk_index.embedder.dim
            for key, text in zip(keys, item.documents, strict=True):
                chunks = self.mem.get(key, namespace=ns).version.chunk_count
                self.costs[index_cost_arm].append(
                    {"ms": ms / len(keys), "bytes": len(text.encode("utf-8")) + chunks * dim * 4}
                )
        return ns

    def _warm_index(self, ns: str, question: str) -> None:
        """The first search of a namespace embeds its chunks: a one-off cost, kept out of query latency."""
        self.mem.search(question, k=1, namespace=ns)

    def _query(self, item: suites.Item, ns: str, mode: str, keys: list[str] | None) -> dict[str, Any]:
        r = self.mem.query(
            item.question,
            namespace=ns,
            mode=mode,
            k=self.k,
            document_ids=keys,
            max_new_tokens=self.max_new_tokens,
            log=False,
        )
        return {
            "answer": r.answer,
            "prompt_tokens": r.prompt_tokens,
            "completion_tokens": r.completion_tokens,
            "mode": r.mode,
            "reason": r.reason,
            "adapters": len(r.adapters),
            "chunks": len(r.chunks),
            # the measured fidelity of the adapters used (self-study), to calibrate the router's min_fidelity
            "fidelity": _mean([a.fidelity["containment"] for a in r.adapters if "containment" in (a.fidelity or {})]),
        }


# ---------------------------------------------------------------------------- summaries
def _options(what: str, options: dict[str, Any] | str | None, make: Callable[..., Any]) -> dict[str, Any]:
    """``what`` options from a dict or a JSON object, checked with ``make(**options)`` before any model loads."""
    from memory.config import json_options

    parsed = (
        dict(options or {})
        if options is None or isinstance(options, dict)
        else json_options(f"{what} options", options)
    )
    try:
        make(**parsed)
    except TypeError as e:
        raise ValidationError(f"unknown {what} option: {e}") from None
    return parsed


def _recipe(options: dict[str, Any] | str | None) -> dict[str, Any]:
    """Self-study recipe options (:class:`memory.self_study.SelfStudyConfig` fields).

    >>> _recipe('{"adapters": "per-chunk"}'), _recipe(None)
    ({'adapters': 'per-chunk'}, {})
    """
    from memory.self_study import SelfStudyConfig

    return _options("self-study", options, SelfStudyConfig)


def _router(options: dict[str, Any] | str | None) -> RouterConfig:
    """The ``auto`` router of the run: :class:`memory.router.RouterConfig` with these fields changed.

    >>> _router('{"hybrid_max_chunks": 1}').hybrid_max_chunks
    1
    """
    return RouterConfig(**_options("router", options, RouterConfig))


def select(items: Sequence[suites.Item], pattern: str | None = None, limit: int | None = None) -> list[suites.Item]:
    """The items whose id matches the shell-style ``pattern`` (all without one), the first ``limit`` of them.

    >>> its = [suites.Item(id=i, documents=["d"], question="q", answers=["a"]) for i in ("a-1", "b-1", "b-2")]
    >>> [it.id for it in select(its, "b-*")], [it.id for it in select(its, limit=1)]
    (['b-1', 'b-2'], ['a-1'])
    """
    chosen = [it for it in items if pattern is None or fnmatch.fnmatchcase(it.id, pattern)]
    return chosen if limit is None else chosen[:limit]


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _summary(rows: list[dict[str, Any]], costs: list[dict[str, Any]], n_boot: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows)}
    for name in METRIC_NAMES:
        mean, low, high = metrics.bootstrap_ci([r[name] for r in rows], n_boot=n_boot)
        out[name] = {"mean": mean, "low": low, "high": high}
    for field in ("prefill_ms", "total_ms", "prompt_tokens", "kv_cache_bytes"):
        vals = np.asarray([r[field] for r in rows], dtype=float)
        out[field] = {"mean": float(vals.mean()), "p50": float(np.median(vals)), "max": float(vals.max())}
    out["peak_rss_mb"] = max(r["peak_rss_bytes"] for r in rows) / 2**20
    modes: dict[str, int] = {}
    for r in rows:
        if "mode" in r:
            modes[r["mode"]] = modes.get(r["mode"], 0) + 1
    if modes:
        out["modes_used"] = modes
    if any("truncated" in r for r in rows):
        out["truncated"] = sum(bool(r.get("truncated")) for r in rows)
    out["internalize_ms_per_document"] = float(np.mean([c["ms"] for c in costs])) if costs else 0.0
    tokens = sum(c.get("tokens", 0) for c in costs)
    if tokens:  # adapter arms: the one-off cost per 1k document tokens
        out["internalize_s_per_1k_tokens"] = sum(c["ms"] for c in costs if c.get("tokens")) / tokens
    fids = [c["fidelity"]["containment"] for c in costs if "containment" in (c.get("fidelity") or {})]
    if fids:
        out["fidelity_containment_mean"] = float(np.mean(fids))
    out["bytes_stored_per_document"] = float(np.mean([c["bytes"] for c in costs])) if costs else 0.0
    return out


def compare(rows: list[dict[str, Any]], arms: list[str], *, n_boot: int = 2000) -> list[dict[str, Any]]:
    """Paired bootstrap between every two arms on the items both answered, for each metric."""
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["arm"], {})[r["item"]] = r
    out = []
    present = [a for a in arms if a in by]
    for ai, a in enumerate(present):
        for b in present[ai + 1 :]:
            shared = [i for i in by[a] if i in by[b]]
            if not shared:
                continue
            for name in METRIC_NAMES:
                d = metrics.paired_bootstrap(
                    [by[a][i][name] for i in shared], [by[b][i][name] for i in shared], n_boot=n_boot
                )
                out.append({"a": a, "b": b, "metric": name, **d})
    return out


def run(
    quick: bool = False,
    data: str | Path | None = None,
    output: str | Path | None = None,
    arms: Sequence[str] | str | None = None,
    *,
    suite: str = "builtin",
    k: int = 2,
    max_new_tokens: int | None = None,
    context_tokens: int | None = None,
    cd_items: int | None = None,
    cd_steps: int | None = None,
    self_study: dict[str, Any] | str | None = None,
    router: dict[str, Any] | str | None = None,
    checkpoint: str | None = None,
    limit: int | None = None,
    items: str | None = None,
    seed: int | None = None,
    n_boot: int = 2000,
    settings: Settings | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the QA comparison and write ``qa.json``, ``report.md`` and plots into ``output``.

    Args:
        quick: the small built-in suite, few context-distillation items and steps.
        data: a JSONL file of items; malformed lines are reported (``errors``) and skipped.
        output: directory for the report (default ``$PMEM_HOME/eval/qa-<UTC time>``).
        arms: a subset of :data:`ARMS` (list or comma-separated string).
        cd_items: run context distillation on the first ``cd_items`` items only (quick: 2).
        cd_steps: optimizer steps per document for context distillation (quick: 12; default: its own).
        self_study: recipe options of the self-study arm (:class:`memory.self_study.SelfStudyConfig` fields, a
            dict or a JSON object), e.g. ``{"adapters": "per-chunk"}``; default: the shipped recipe.
        checkpoint: a D2L checkpoint directory (default: the one shipped for the base model).
        items: only the items whose id matches this shell-style pattern (``testdoc3-*``), before ``limit``.
        seed: draw the built-in items from another seed (a fresh set of the same kind; ignored with ``data``).
        progress: called with (items done, items) after each item; without it, progress goes to stderr
            (:class:`~memory.evaluation.progress.ProgressBar`).

    >>> run(quick=True, data="qa.jsonl", arms="none,context,rag,auto")["arms"].keys()   # doctest: +SKIP
    dict_keys(['none', 'context', 'rag', 'auto', ...])
    """
    from memory.api import ParametricMemory
    from memory.evaluation.report import write_report

    arm_list = _check_arms(arms)
    recipe = _recipe(self_study)
    router_config = _router(router)
    if data is not None:
        loaded = suites.load_jsonl(data)
        chosen, errors, source = loaded.items, loaded.errors, str(data)
    else:
        chosen, errors = suites.builtin(quick, suite, seed), []
        source = f"builtin:{suite}" + (f"@seed{seed}" if seed is not None else "")
    chosen = select(chosen, items, limit)
    if items is not None:
        source += f" (items {items})"
    if not chosen:
        raise ValidationError(f"no valid items in {source} ({len(errors)} malformed line(s))")
    max_new_tokens = max_new_tokens or (24 if quick else 32)
    cd_items = cd_items if cd_items is not None else (2 if quick else len(chosen))
    cd_steps = cd_steps if cd_steps is not None else (12 if quick else None)
    settings = settings or Settings.from_env()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    outdir = Path(output) if output is not None else settings.home / "eval" / f"qa-{stamp}"
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pmem-eval-") as tmp:
        mem = ParametricMemory(
            settings.with_(database_url=f"sqlite:///{tmp}/eval.db", blob_url=f"{tmp}/blobs"),
            router_config=router_config,
        )
        base = mem.base_model
        window = context_tokens or int(getattr(base.config, "max_position_embeddings", 2048)) - max_new_tokens
        unavailable: dict[str, str] = {}
        if "d2l" in arm_list or {"hybrid", "auto"} & set(arm_list):
            reason = _d2l_unavailable(mem, checkpoint)
            if reason:
                unavailable["d2l"] = reason
            elif checkpoint is not None:  # every D2L internalization of this store (d2l, hybrid, auto) uses it
                mem.configure_internalizer("d2l", checkpoint=checkpoint)
        if cd_steps is not None:
            _configure_cd(
                mem, steps=cd_steps, max_questions=min(8, cd_steps), **({"max_answer_tokens": 16} if quick else {})
            )
        if recipe:
            mem.configure_internalizer("self-study", **recipe)
        preferred = "self-study" if "self-study" in arm_list else ("d2l" if "d2l" not in unavailable else "cd")
        runner = _Runner(mem, k=k, max_new_tokens=max_new_tokens, window=window, checkpoint=checkpoint)
        runner._direct("Hello")  # warm-up: the first generation pays one-off kernel and cache set-up
        with ProgressBar("qa eval", len(chosen), enabled=progress is None) as bar:
            for i, item in enumerate(chosen):
                methods = [
                    m
                    for m in ADAPTER_ARMS
                    if m not in unavailable
                    and (m in arm_list or (m == preferred and {"hybrid", "auto"} & set(arm_list)))
                    and (m != "cd" or i < cd_items)
                ]
                runner.run_item(i, item, arm_list, methods, preferred if preferred in methods else None)
                bar.advance(1, "items")
                if progress:
                    progress(i + 1, len(chosen))
        fingerprint = base.fingerprint
        mem.engine.dispose()  # the throw-away database goes with the temporary directory
    seconds = time.perf_counter() - t_start
    rows = runner.rows
    summary: dict[str, Any] = {}
    for arm in arm_list:
        arm_rows = [r for r in rows if r["arm"] == arm]
        if arm in unavailable or (arm in ("hybrid", "auto") and preferred in unavailable and not arm_rows):
            summary[arm] = {"available": False, "reason": unavailable.get(arm) or unavailable.get(preferred)}
            continue
        if not arm_rows:
            fails = runner.failures.get(arm) or runner.failures.get(preferred) or []
            summary[arm] = {"available": False, "reason": "; ".join(fails[:3]) or "no item ran on this arm"}
            continue
        summary[arm] = {"available": True, **_summary(arm_rows, runner.costs.get(arm, []), n_boot)}
        if arm in ("hybrid", "auto"):
            summary[arm]["adapter_method"] = preferred
        if runner.failures.get(arm):
            summary[arm]["failures"] = runner.failures[arm]
    result: dict[str, Any] = {
        "suite": source,
        "items": len(chosen),
        "errors": errors,
        "arms": summary,
        "comparisons": compare(rows, arm_list, n_boot=n_boot),
        "config": {
            "quick": quick,
            "k": k,
            "max_new_tokens": max_new_tokens,
            "window_tokens": window,
            "cd_items": cd_items,
            "cd_steps": cd_steps,
            "self_study": recipe,
            "router": dataclasses.asdict(router_config),
            "chunk_tokens": settings.chunk_tokens,
            "base_model": fingerprint,
            "checkpoint": checkpoint,
        },
        "run_seconds": round(seconds, 1),
        "output": str(outdir),
    }
    write_report(result, rows, outdir)
    return result
