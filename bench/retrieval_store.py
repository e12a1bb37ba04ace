"""Retrieval through the database: the in-process backend and pgvector side by side, at 100k+ chunks.

For each backend and size ``n`` it writes one namespace of ``n`` chunks (``n / 10`` documents of 10 chunks,
synthetic 384-d vectors shaped like sentence embeddings, stored as the ``chunks.embedding`` the memory
would have computed) straight into a fresh database (SQLite for in-process, a PostgreSQL with pgvector
started from the ``pgserver`` package for pgvector, or ``PMEM_BENCH_PG_URL``), then reports:

- ``build_s``: the first search of a process on that namespace (in-process: load the embeddings, build the
  HNSW graph, save it; pgvector: the HNSW index build, ``CREATE INDEX``);
- ``search``: p50/p95 latency of single searches through :class:`~memory.chunk_index.ChunkIndex` (query
  embedding excluded: the synthetic embedder returns a prepared vector), and ``recall_at_10`` against exact
  search (numpy over all vectors), at the backend's default HNSW candidate list (``ef_search``);
  ``search_by_ef``: the same at each of ``EF_SWEEP`` (the ``retrieval_ef_search`` setting);
  ``search_filtered_10pct``: the default with a metadata filter keeping ~10%;
- ``new_process``: a fresh process's first search (in-process: loads the saved index) and the growth of
  its resident memory from before it opened the index to after that search: memory per process;
- ``add_one_document``: ``ParametricMemory.add`` of a 10-chunk document, then the search that finds it
  (embedding its chunks and updating the index in place), timed separately, by a handle that has just loaded the
  index; then the same for a second document (``second_*``: the first change after a load also groups the
  loaded index's keys by document, once).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
import time
from datetime import UTC
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DIM = 384
K = 10
CHUNKS_PER_DOC = 10
NAMESPACE = "bench"
_QUERY_PREFIX = "bench-query-"
EF_SWEEP = (40, 100, 200, 400, 800)  # HNSW candidate lists measured after the default (search_by_ef)


class SyntheticEmbedder:
    """Deterministic vectors for any text; texts ``bench-query-<i>`` map to prepared query vectors."""

    name = "synthetic-bench"
    dim = DIM

    def __init__(self, queries: np.ndarray | None = None) -> None:
        self.queries = queries

    def _vec(self, text: str) -> np.ndarray:
        if text.startswith(_QUERY_PREFIX) and self.queries is not None:
            return self.queries[int(text[len(_QUERY_PREFIX) :])]
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        return v / np.linalg.norm(v)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return np.stack([self._vec(t) for t in texts]) if texts else np.zeros((0, DIM), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vec(text)


MODEL_KEY = f"{SyntheticEmbedder.name}:{DIM}"


# ---------------------------------------------------------------------------- loading
def fill(url: str, x: np.ndarray, topics: np.ndarray, pgvector: bool) -> float:
    """Write ``len(x)`` chunks (and, for pgvector, their ``chunk_vectors`` rows) into a migrated database."""
    import sqlalchemy as sa

    from memory.db import get_engine, migrate
    from memory.db.stamps import new_stamp

    migrate.upgrade(url)
    engine = get_engine(url)
    n = len(x)
    docs = n // CHUNKS_PER_DOC
    t0 = time.perf_counter()
    md = sa.MetaData()
    md.reflect(engine, only=["namespaces", "documents", "document_versions", "chunks"])
    ns_t, doc_t, ver_t, chunk_t = (md.tables[t] for t in ("namespaces", "documents", "document_versions", "chunks"))
    with engine.begin() as conn:
        ns_id = conn.execute(
            ns_t.insert().values(
                name=NAMESPACE, index_stamp=new_stamp(), index_epoch=new_stamp(), created_at=sa.func.now()
            )
        ).inserted_primary_key[0]
        for start in range(0, docs, 5_000):
            rows = range(start, min(docs, start + 5_000))
            conn.execute(
                doc_t.insert(),
                [
                    {
                        "id": j + 1,
                        "namespace_id": ns_id,
                        "key": f"d{j}",
                        "metadata": {"topic": int(topics[j * CHUNKS_PER_DOC])},
                        "row_version": 1,
                        "index_stamp": new_stamp(),
                        "created_at": _now(),
                        "updated_at": _now(),
                    }
                    for j in rows
                ],
            )
            conn.execute(
                ver_t.insert(),
                [
                    {
                        "id": j + 1,
                        "document_id": j + 1,
                        "number": 1,
                        "content_sha256": hashlib.sha256(b"%d" % j).hexdigest(),
                        "byte_count": 100,
                        "token_count": 100,
                        "chunk_count": CHUNKS_PER_DOC,
                        "parser": {},
                        "created_at": _now(),
                    }
                    for j in rows
                ],
            )
            conn.execute(
                doc_t.update().where(doc_t.c.id == sa.bindparam("did")).values(current_version_id=sa.bindparam("vid")),
                [{"did": j + 1, "vid": j + 1} for j in rows],
            )
            conn.execute(
                chunk_t.insert(),
                [
                    {
                        "id": i + 1,
                        "version_id": i // CHUNKS_PER_DOC + 1,
                        "ordinal": i % CHUNKS_PER_DOC,
                        "text": f"chunk {i}",
                        "start_char": 0,
                        "end_char": 10,
                        "token_count": 3,
                        "metadata": {},
                        "embedding": x[i].astype("<f4").tobytes(),
                        "embedding_model": MODEL_KEY,
                    }
                    for i in range(start * CHUNKS_PER_DOC, min(docs, start + 5_000) * CHUNKS_PER_DOC)
                ],
            )
        if engine.dialect.name == "postgresql":
            for t in ("documents", "document_versions", "chunks"):
                conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), (SELECT max(id) FROM {t}))"))
    if pgvector:  # bulk load without the HNSW index (built afterwards, timed as build_s)
        with engine.begin() as conn:
            conn.execute(sa.text("DROP INDEX IF EXISTS ix_chunk_vectors_hnsw_384"))
        _copy_vectors(engine, x)
    return round(time.perf_counter() - t0, 2)


def _now() -> Any:
    from datetime import datetime

    return datetime.now(UTC)


def _copy_vectors(engine: Any, x: np.ndarray) -> None:
    import io

    raw = engine.raw_connection()
    try:
        with raw.cursor() as cur, cur.copy("COPY chunk_vectors (chunk_id, model, dim, embedding) FROM STDIN") as copy:
            for start in range(0, len(x), 10_000):
                buf = io.StringIO()
                block = x[start : start + 10_000]
                np.savetxt(buf, block, fmt="%.7g", delimiter=",")
                lines = buf.getvalue().splitlines()
                copy.write("".join(f"{start + i + 1}\t{MODEL_KEY}\t{DIM}\t[{line}]\n" for i, line in enumerate(lines)))
        raw.commit()
    finally:
        raw.close()


# ---------------------------------------------------------------------------- measuring
def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _new_process(url: str, home: str, backend: str, queries: np.ndarray, out: Any) -> None:
    """Runs in a fresh process: open the index, search once; report time and resident-memory growth."""
    from memory.chunk_index import ChunkIndex, index_path
    from memory.db import get_engine, session_factory

    before = _rss_mb()
    t0 = time.perf_counter()
    engine = get_engine(url)
    idx = ChunkIndex(
        session_factory(engine),
        SyntheticEmbedder(queries),
        backend=backend,
        path=index_path(Path(home), engine.url.render_as_string(hide_password=True), MODEL_KEY),
    )
    idx.search(f"{_QUERY_PREFIX}0", k=K, ns=NAMESPACE, filter=None)
    out.put({"first_search_s": round(time.perf_counter() - t0, 3), "rss_growth_mb": round(_rss_mb() - before, 1)})


def _percentiles(ms: list[float]) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p95_ms": round(float(np.percentile(ms, 95)), 3)}


def _search_figures(idx: Any, exact: list[set[int]]) -> dict[str, float]:
    """p50/p95 latency of unfiltered searches for the prepared queries, and their recall@10 against ``exact``."""
    ms, recall = [], []
    for i, want in enumerate(exact):
        t = time.perf_counter()
        hits = idx.search(f"{_QUERY_PREFIX}{i}", k=K, ns=NAMESPACE, filter=None)
        ms.append((time.perf_counter() - t) * 1000)
        got = {int(h.document_id[1:]) * CHUNKS_PER_DOC + h.ordinal for h in hits}
        recall.append(len(got & want) / K)
    return {**_percentiles(ms), "recall_at_10": round(float(np.mean(recall)), 4)}


def bench_backend(backend: str, n: int, url: str, home: str, n_queries: int) -> dict[str, Any]:
    from bench.retrieval import queries_for, synthetic_corpus
    from memory.api import ParametricMemory
    from memory.chunk_index import ChunkIndex, index_path
    from memory.db import get_engine, session_factory

    x, meta = synthetic_corpus(n)
    topics = np.array([m["topic"] for m in meta])
    qs = queries_for(x, n_queries)
    out: dict[str, Any] = {"backend": backend, "n": n, "documents": n // CHUNKS_PER_DOC, "queries": n_queries}
    out["load_s"] = fill(url, x, topics, backend == "pgvector")
    engine = get_engine(url)
    path = index_path(Path(home), engine.url.render_as_string(hide_password=True), MODEL_KEY)
    t0 = time.perf_counter()
    if backend == "pgvector":
        import sqlalchemy as sa

        with engine.begin() as conn:
            conn.execute(sa.text("SET maintenance_work_mem = '4GB'"))
            conn.execute(sa.text("ANALYZE"))
            conn.execute(
                sa.text(
                    "CREATE INDEX ix_chunk_vectors_hnsw_384 ON chunk_vectors USING hnsw "
                    "((embedding::vector(384)) vector_cosine_ops) WHERE dim = 384"
                )
            )
    idx = ChunkIndex(session_factory(engine), SyntheticEmbedder(qs), backend=backend, path=path)
    idx.search(f"{_QUERY_PREFIX}0", k=K, ns=NAMESPACE, filter=None)
    if backend == "inprocess":
        idx.save()  # builds the HNSW graph and writes it: what the next process loads
    out["build_s"] = round(time.perf_counter() - t0, 2)

    exact = [set(np.argpartition(-(x @ q), K)[:K].tolist()) for q in qs]
    out["search"] = {"ef_search": idx.ef_search, **_search_figures(idx, exact)}
    default_ef, out["search_by_ef"] = idx.ef_search, []
    for ef in EF_SWEEP:
        idx.ef_search = ef
        out["search_by_ef"].append({"ef_search": ef, **_search_figures(idx, exact)})
    idx.ef_search = default_ef
    wanted = sorted(set(topics.tolist()))[: max(1, len(set(topics.tolist())) // 10)]
    flt = {"topic": {"$in": wanted}}
    ms = []
    for i in range(min(n_queries, 50)):
        t = time.perf_counter()
        idx.search(f"{_QUERY_PREFIX}{i}", k=K, ns=NAMESPACE, filter=flt)
        ms.append((time.perf_counter() - t) * 1000)
    out["search_filtered_10pct"] = _percentiles(ms)

    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_new_process, args=(url, home, backend, qs, q))
    p.start()
    out["new_process"] = q.get(timeout=1800)
    p.join()

    from memory.config import Settings

    settings = Settings.from_env(home=home, database_url=url, retrieval_backend=backend)
    mem = ParametricMemory(settings, embedder=SyntheticEmbedder(qs))
    mem.search(f"{_QUERY_PREFIX}1", k=K, namespace=NAMESPACE)  # this handle's index is ready (loaded)
    text = "\n\n".join(f"Paragraph {i} of the new document: " + "words " * 60 for i in range(CHUNKS_PER_DOC))
    t0 = time.perf_counter()
    r = mem.add(text, document_id="new-doc", namespace=NAMESPACE)
    add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mem.search(f"{_QUERY_PREFIX}2", k=K, namespace=NAMESPACE)  # embeds the new chunks, updates the index
    search_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mem.search(f"{_QUERY_PREFIX}3", k=K, namespace=NAMESPACE)
    after_s = time.perf_counter() - t0
    found = mem.search("Paragraph 0", k=K, namespace=NAMESPACE, filter={"document_id": "new-doc"})
    t0 = time.perf_counter()
    mem.add(text.replace("Paragraph", "Section"), document_id="second-doc", namespace=NAMESPACE)
    second_add_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mem.search(f"{_QUERY_PREFIX}4", k=K, namespace=NAMESPACE)
    second_search_s = time.perf_counter() - t0
    out["add_one_document"] = {
        "chunks": r.document.version.chunk_count,
        "add_ms": round(add_s * 1000, 1),
        "next_search_ms": round(search_s * 1000, 1),
        "search_after_that_ms": round(after_s * 1000, 1),
        "found": bool(found),
        "second_add_ms": round(second_add_s * 1000, 1),
        "second_next_search_ms": round(second_search_s * 1000, 1),
    }
    out["index_file_mb"] = round(path.stat().st_size / 2**20, 1) if path.is_file() else None
    return out


# ---------------------------------------------------------------------------- databases
class _PgServer:
    """A PostgreSQL with pgvector for the benchmark: ``PMEM_BENCH_PG_URL``, or one started from ``pgserver``."""

    def __init__(self, root: str) -> None:
        self.server = None
        self.url = os.environ.get("PMEM_BENCH_PG_URL")
        if self.url:
            return
        import pgserver

        self.server = pgserver.get_server(Path(root) / "pg", cleanup_mode="stop")
        self.server.psql(
            "ALTER SYSTEM SET shared_buffers = '2GB'; ALTER SYSTEM SET max_parallel_maintenance_workers = 2;"
        )
        self.server.psql("SELECT pg_reload_conf();")
        socket_dir = self.server.get_uri().split("host=", 1)[1]
        self.base = f"postgresql+psycopg://postgres@/%s?host={socket_dir}"

    def database(self, name: str) -> str:
        if self.url:
            return self.url
        self.server.psql(f"CREATE DATABASE {name};")
        return self.base % name

    def close(self) -> None:
        if self.server is not None:
            from memory.db import dispose_engines

            dispose_engines()
            self.server.cleanup()


def run_store(backends: list[str], sizes: list[int], n_queries: int = 200) -> list[dict[str, Any]]:
    """Both backends at each size (see the module docstring); a JSON-ready list."""
    out = []
    with tempfile.TemporaryDirectory(prefix="pmem-bench-store-") as root:
        pg = _PgServer(root) if "pgvector" in backends else None
        try:
            for n in sizes:
                for backend in backends:
                    home = Path(root) / f"{backend}-{n}"
                    url = f"sqlite:///{home / 'pmem.db'}" if backend == "inprocess" else pg.database(f"bench_{n}")  # type: ignore[union-attr]
                    log.info("retrieval store bench: %s, %d chunks", backend, n)
                    t0 = time.perf_counter()
                    result = bench_backend(backend, n, url, str(home), n_queries)
                    result["total_s"] = round(time.perf_counter() - t0, 1)
                    log.info("%s", json.dumps(result))
                    out.append(result)
        finally:
            if pg is not None:
                pg.close()
    return out


# ---------------------------------------------------------------------------- plot
def plot_recall_against_latency(results: list[dict[str, Any]], path: str | Path) -> None:
    """Recall@10 against p50 search latency over the ``search_by_ef`` sweep: a line per backend and size,
    each point labelled with its ``ef_search``. ``results``: documents written by ``pmem bench retrieval
    --backend ... --output``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for doc in results:
        for run in doc["store"]:
            pts = run.get("search_by_ef") or []
            if not pts:
                continue
            label = f"{run['backend']}, {run['n']:,} chunks"
            style = "o-" if run["backend"] == "inprocess" else "s--"
            ax.plot([p["p50_ms"] for p in pts], [p["recall_at_10"] for p in pts], style, label=label)
            for p in pts:
                ax.annotate(
                    str(p["ef_search"]),
                    (p["p50_ms"], p["recall_at_10"]),
                    fontsize=7,
                    xytext=(3, -9),
                    textcoords="offset points",
                )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("search p50 (ms, log scale)")
    ax.set_ylabel("recall@10 against exact search")
    ax.set_title("HNSW candidate list (ef_search, labelled): recall against latency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.retrieval_store OUT.png RESULT.json [RESULT.json ...]``: plot saved results."""
    import argparse

    parser = argparse.ArgumentParser(description="Plot recall@10 against latency from saved store results.")
    parser.add_argument("plot", help="PNG to write")
    parser.add_argument("results", nargs="+", help="JSON written by `pmem bench retrieval --backend ... --output`")
    args = parser.parse_args(argv)
    plot_recall_against_latency([json.loads(Path(p).read_text()) for p in args.results], args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
