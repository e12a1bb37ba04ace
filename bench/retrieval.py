"""Retrieval benchmark: query latency by collection size, and recall@5 of the HNSW index against exact search.

``pmem bench retrieval [--quick] --json`` calls :func:`run`. For each size (1k, 10k, 100k; ``--quick``:
1k and 10k) it fills one namespace of a :class:`~memory.retrieval.VectorIndex` with 384-d unit vectors
shaped like MiniLM sentence embeddings (a shared mean direction, topics, sub-topics, noise), then times
single-vector queries, one at a time:

- ``exact``: numpy matmul over the namespace (what ``backend="auto"`` uses below ``ann_threshold``);
- ``hnsw``: the usearch graph, with recall@5 = |ANN top 5 ∩ exact top 5| / 5, averaged over queries;
- ``*_topic_10pct`` / ``*_range_50pct``: the same with a metadata filter; ``plan`` says whether the
  index scanned the matching subset exactly (at most ``ann_threshold`` rows) or over-fetched from the graph.

The machine's load average is recorded: on a shared CPU, p95 figures mostly measure the neighbours.

A last section embeds generated facts and questions with the real all-MiniLM-L6-v2 and reports the
same figures plus how often the fact that answers a question ranks first.

Standalone: ``python -m bench.retrieval --quick``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from typing import Any

import numpy as np

from memory.retrieval import AnnParams, VectorIndex, compile_filter, usearch_available

log = logging.getLogger(__name__)

DIM = 384
K = 5
SEED = 1234


# ---------------------------------------------------------------------------- data
def synthetic_corpus(n: int, dim: int = DIM, seed: int = SEED) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``n`` unit vectors with the structure of sentence embeddings, and metadata with a ``topic`` field.

    Real MiniLM chunk embeddings share a mean direction (pairwise cosine ~0.1 between unrelated texts)
    and cluster by topic and sub-topic; isotropic Gaussian vectors would be unrealistically hard for HNSW.
    """
    rng = np.random.default_rng(seed)
    n_topics = max(8, n // 500)
    mean = rng.standard_normal(dim)
    mean *= 0.35 / np.linalg.norm(mean)
    topics = rng.standard_normal((n_topics, dim)) / np.sqrt(dim)
    subs = topics[np.repeat(np.arange(n_topics), 8)] + 0.6 * rng.standard_normal((n_topics * 8, dim)) / np.sqrt(dim)
    sub_of = rng.integers(0, len(subs), n)
    x = mean + subs[sub_of] + 0.8 * rng.standard_normal((n, dim)) / np.sqrt(dim)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    meta = [{"topic": int(s // 8), "chunk": i, "doc": f"doc{i // 20}"} for i, s in enumerate(sub_of)]
    return x, meta


def queries_for(x: np.ndarray, m: int, seed: int = SEED + 1) -> np.ndarray:
    """Paraphrase-like queries: a stored vector plus noise (cosine ~0.75 to its source)."""
    rng = np.random.default_rng(seed)
    src = x[rng.integers(0, len(x), m)]
    q = src + 0.9 * rng.standard_normal(src.shape).astype(np.float32) / np.sqrt(x.shape[1])
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def bench_filters(meta: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Two filters: ~10% of rows picked by topic (correlated with the vectors), 50% by chunk number (not)."""
    topics = sorted({m["topic"] for m in meta})
    return {
        "topic_10pct": {"topic": {"$in": topics[: max(1, len(topics) // 10)]}},
        "range_50pct": {"chunk": {"$gte": len(meta) // 2}},
    }


# ---------------------------------------------------------------------------- timing
def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3)}


def _time_queries(
    idx: VectorIndex, qs: np.ndarray, *, exact: bool, flt: dict[str, Any] | None = None
) -> tuple[dict[str, float], list[list[str]]]:
    ms, ids = [], []
    idx.search(qs[0], k=K, namespace="bench", filter=flt, exact=exact)  # warm-up
    for q in qs:
        t = time.perf_counter()
        hits = idx.search(q, k=K, namespace="bench", filter=flt, exact=exact)
        ms.append((time.perf_counter() - t) * 1000)
        ids.append([h.id for h in hits])
    return _percentiles(ms), ids


def _recall(approx: list[list[str]], exact: list[list[str]]) -> float:
    return round(float(np.mean([len(set(a) & set(e)) / max(1, len(e)) for a, e in zip(approx, exact, strict=True)])), 4)


def bench_size(n: int, n_queries: int, n_filtered: int, threads: int) -> dict[str, Any]:
    """Latency and recall figures for one collection of ``n`` synthetic vectors."""
    x, meta = synthetic_corpus(n)
    ids = [f"c{i}" for i in range(n)]
    qs = queries_for(x, n_queries)
    filters = bench_filters(meta)
    out: dict[str, Any] = {"n": n, "queries": n_queries, "filtered_queries": n_filtered}

    idx = VectorIndex(DIM, backend="exact")
    t = time.perf_counter()
    idx.add(ids, x, meta, namespace="bench")
    out["add_s"] = round(time.perf_counter() - t, 3)
    out["exact"], exact_ids = _time_queries(idx, qs, exact=True)
    exact_f_ids = {}
    for name, flt in filters.items():
        out[f"exact_{name}"], exact_f_ids[name] = _time_queries(idx, qs[:n_filtered], exact=True, flt=flt)

    if usearch_available():
        ann = VectorIndex(DIM, backend="usearch", threads=threads)
        ann.add(ids, x, meta, namespace="bench")
        t = time.perf_counter()
        ann.search(qs[0], k=K, namespace="bench")  # builds the graph
        out["hnsw_build_s"] = round(time.perf_counter() - t, 3)
        out["hnsw"], ann_ids = _time_queries(ann, qs, exact=False)
        out["hnsw"]["recall_at_5"] = _recall(ann_ids, exact_ids)
        for name, flt in filters.items():
            matching = sum(1 for m in meta if compile_filter(flt)(m))
            stats, got = _time_queries(ann, qs[:n_filtered], exact=False, flt=flt)
            stats["recall_at_5"] = _recall(got, exact_f_ids[name])
            stats["plan"] = "graph+overfetch" if matching > ann.ann_threshold else "exact subset scan"
            out[f"hnsw_{name}"] = stats
        out["auto_uses"] = "hnsw" if n >= ann.ann_threshold else "exact"
    return out


# ---------------------------------------------------------------------------- real embeddings
_PRODUCTS = [
    "router",
    "laptop",
    "printer",
    "monitor",
    "keyboard",
    "headset",
    "webcam",
    "tablet",
    "phone",
    "speaker",
    "camera",
    "drone",
    "scanner",
    "projector",
    "charger",
    "modem",
    "smartwatch",
    "e-reader",
    "console",
    "mouse",
]
_CITIES = ["Lisbon", "Oslo", "Nairobi", "Osaka", "Lima", "Quebec", "Tallinn", "Perth", "Cusco", "Porto"]
_COLOURS = ["red", "blue", "green", "black", "white", "silver", "orange", "purple"]


def real_corpus(n: int, seed: int = SEED) -> tuple[list[str], list[str], list[int]]:
    """``n`` generated facts and one question per fact (``answers[i]`` is the fact that answers question i)."""
    rng = np.random.default_rng(seed)
    facts, questions = [], []
    for i in range(n):
        p = f"{_COLOURS[rng.integers(len(_COLOURS))]} {_PRODUCTS[i % len(_PRODUCTS)]} model {i}"
        city, price, year = (
            _CITIES[rng.integers(len(_CITIES))],
            int(rng.integers(20, 2000)),
            int(rng.integers(2001, 2025)),
        )
        facts.append(f"The {p} costs {price} dollars, ships from our {city} warehouse and was released in {year}.")
        questions.append(f"Where does the {p} ship from?")
    return facts, questions, list(range(n))


def bench_real(n: int, threads: int) -> dict[str, Any]:
    """The same figures on real MiniLM embeddings of ``n`` generated facts."""
    from memory.retrieval import MiniLMEmbedder

    emb = MiniLMEmbedder()
    facts, questions, answers = real_corpus(n)
    t = time.perf_counter()
    docs = emb.embed_documents(facts)
    embed_s = time.perf_counter() - t
    t = time.perf_counter()
    qs = np.stack([emb.embed_query(q) for q in questions[:100]])
    query_embed_ms = (time.perf_counter() - t) / len(qs) * 1000
    ids = [f"f{i}" for i in range(n)]
    out: dict[str, Any] = {
        "model": emb.name,
        "n": n,
        "queries": len(qs),
        "embed_docs_per_s": round(n / embed_s, 1),
        "embed_query_ms": round(query_embed_ms, 2),
    }
    idx = VectorIndex(emb.dim, backend="exact")
    idx.add(ids, docs, namespace="bench")
    out["exact"], exact_ids = _time_queries(idx, qs, exact=True)
    out["exact"]["answer_at_1"] = round(float(np.mean([r[0] == f"f{answers[i]}" for i, r in enumerate(exact_ids)])), 4)
    if usearch_available():
        ann = VectorIndex(emb.dim, backend="usearch", threads=threads)
        ann.add(ids, docs, namespace="bench")
        out["hnsw"], ann_ids = _time_queries(ann, qs, exact=False)
        out["hnsw"]["recall_at_5"] = _recall(ann_ids, exact_ids)
    return out


# ---------------------------------------------------------------------------- entry point
def run(quick: bool = False, backend: str | None = None, sizes: str | None = None) -> dict[str, Any]:
    """Run the benchmark and return its figures as a JSON-ready dict.

    ``backend`` (``inprocess``, ``pgvector`` or ``both``) runs only the database-backed section
    (:mod:`bench.retrieval_store`) for those backends, at ``sizes`` (comma-separated chunk counts; default
    100,000, ``--quick`` 10,000). Without it, the index section runs, then the store section for the
    in-process backend ("add one document to a 100k-chunk namespace, then search").

    >>> run(quick=True)["sizes"][0]["n"]  # doctest: +SKIP
    1000
    """
    import torch

    # One thread: a query is latency-bound single-item work, and on a shared CPU two torch/BLAS threads
    # wait on each other (measured: MiniLM query 79 ms with 1 thread, 1,634 ms with 2, load average 13).
    threads = 1
    torch.set_num_threads(threads)
    index_sizes = [1_000, 10_000] if quick else [1_000, 10_000, 100_000]
    n_queries, n_filtered = (100, 30) if quick else (300, 60)
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "bench": "retrieval",
        "quick": quick,
        "dim": DIM,
        "k": K,
        "threads": threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m_at_start": round(os.getloadavg()[0], 2),
        "ann_backend": _usearch_version(),
        "ann_params": AnnParams().__dict__,
        "ann_threshold": VectorIndex(DIM).ann_threshold,
        "sizes": [],
    }
    if backend is None:
        for n in index_sizes:
            log.info("retrieval bench: %d vectors", n)
            result["sizes"].append(bench_size(n, n_queries, n_filtered, threads))
        result["real_minilm"] = bench_real(500 if quick else 2000, threads)
    else:
        del result["sizes"]
    from bench.retrieval_store import run_store

    backends = {None: ["inprocess"], "both": ["inprocess", "pgvector"]}.get(backend, [backend])
    store_sizes = [int(v) for v in sizes.split(",")] if sizes else [10_000 if quick else 100_000]
    result["store"] = run_store(backends, store_sizes, n_queries=100 if quick else 200)
    result["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    result["total_s"] = round(time.perf_counter() - t0, 1)
    return result


def _usearch_version() -> str | None:
    if not usearch_available():
        return None
    import usearch

    return f"usearch {usearch.__version__} HNSW"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k vectors only")
    parser.add_argument("--backend", choices=["inprocess", "pgvector", "both"], help="only the database-backed section")
    parser.add_argument("--sizes", help="chunk counts of the database-backed section, e.g. 100000,1000000")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(args.quick, args.backend, args.sizes)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
