"""Registry scale: add throughput, adapter-selection latency and database size as documents pile up.

``pmem bench registry [--quick] --json`` calls :func:`run`: 10,000 short documents (``--quick``: 1,000) are
added one by one to a fresh embedded store (SQLite + blob directory), each with a ready adapter row
(the rows ``internalize`` writes; no weights are made, so the bench measures the registry, not the
model). At 10% and 100% of the documents it times:

- ``add``: documents per second through ``ParametricMemory.add`` (hash, chunk, blob write, rows);
- ``select``: the router's adapter selection for one query: the current adapter of each of the 8
  documents a search returned (one SQL query, ``ParametricMemory._current_adapters``) and the routing
  decision (``memory.router.decide``), p50/p95 over 300 queries;
- ``size``: the SQLite file, its write-ahead log, the blob directory, and bytes per document (file + blobs)
  above the empty store.

Standalone: ``python -m bench.registry --quick``.
"""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

SEED = 5
CANDIDATES = 8  # documents a search hands the router
QUERIES = 300


def _text(rng: random.Random, i: int) -> str:
    from memory.evaluation.suites import invented_name

    name, person, town = invented_name(rng), f"{invented_name(rng)} {invented_name(rng)}", invented_name(rng, 3)
    return (
        f"Record {i}: the {name} cooperative was founded in {rng.randint(1400, 1990)} by {person}. "
        f"It trades in {rng.choice(['wool', 'salt', 'tin', 'amber', 'rice'])} from the town of {town}, "
        f"and its ledger number is {rng.randint(10**6, 10**7)}."
    )


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _store_bytes(mem: Any, home: Path) -> tuple[int, int, int]:
    """(SQLite file, its write-ahead log, blob directory) in bytes, after a checkpoint of the WAL.

    The WAL file keeps its high-water size (~4 MiB) after a checkpoint, so it is reported on its own.
    """
    try:
        with mem.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
    except Exception as e:  # noqa: BLE001 - a busy database just keeps its WAL
        log.info("no WAL checkpoint: %s", e)
    db = home / "pmem.db"
    wal = sum(p.stat().st_size for p in home.glob("pmem.db-*") if p.is_file())
    blobs = home / "blobs"
    return db.stat().st_size, wal, (_dir_bytes(blobs) if blobs.exists() else 0)


def _add_adapters(mem: Any, ns: str, since_id: int) -> int:
    """A ready adapter row for each document version with id > since_id (what internalize records)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from memory.db import Adapter, AdapterStatus, Document, DocumentVersion, Hypernetwork, Namespace

    with Session(mem.engine) as s:
        h = s.scalar(select(Hypernetwork).where(Hypernetwork.name == "bench-registry"))
        if h is None:
            h = Hypernetwork(
                kind="d2l",
                name="bench-registry",
                base_model="bench@0",
                checkpoint_sha256="0" * 64,
                config={},
                training_run={},
                eval_metrics={},
            )
            s.add(h)
            s.flush()
        rows = s.execute(
            select(DocumentVersion.id, Document.namespace_id)
            .join(Document, Document.current_version_id == DocumentVersion.id)
            .join(Namespace, Document.namespace_id == Namespace.id)
            .where(Namespace.name == ns, DocumentVersion.id > since_id)
        ).all()
        s.add_all(
            Adapter(
                namespace_id=nsid,
                version_id=vid,
                hypernetwork_id=h.id,
                base_model="bench@0",
                target_modules=["mlp.down_proj"],
                rank=40,
                chunk_count=1,
                blob_sha256=f"{vid:064x}",
                size_bytes=540_000,
                latency_ms=1.0,
                status=AdapterStatus.ready,
                meta={},
            )
            for vid, nsid in rows
        )
        s.commit()
        return max((vid for vid, _ in rows), default=since_id)


def _select_latency(mem: Any, ns: str, keys: list[str], rng: random.Random) -> dict[str, float]:
    from memory import router

    cfg = router.RouterConfig()
    ms = []
    chosen = 0
    for _ in range(QUERIES):
        picked = rng.sample(keys, CANDIDATES)
        scores = sorted((rng.uniform(0.2, 0.8) for _ in picked), reverse=True)
        t0 = time.perf_counter()
        ready = mem.adapter_registry.current(ns, picked)
        cands = [
            router.Candidate(d, s, d in ready and ready[d].status == "ready", ready[d].status if d in ready else None)
            for d, s in zip(picked, scores, strict=True)
        ]
        route = router.decide("When was the cooperative founded?", "auto", cands, cfg)
        ms.append((time.perf_counter() - t0) * 1000)
        chosen += len(route.adapter_documents)
    a = np.asarray(ms)
    return {
        "p50_ms": float(np.median(a)),
        "p95_ms": float(np.quantile(a, 0.95)),
        "mean_ms": float(a.mean()),
        "adapters_chosen_per_query": chosen / QUERIES,
    }


def run(quick: bool = False, n: int | None = None) -> dict[str, Any]:
    """Fill a fresh store and measure at 10% and 100% of ``10_000`` (quick: ``1_000``) documents."""
    from memory.api import ParametricMemory

    n = n or (1_000 if quick else 10_000)
    marks = sorted({max(n // 10, CANDIDATES), n})
    rng = random.Random(SEED)
    points = []
    with tempfile.TemporaryDirectory(prefix="pmem-bench-registry-") as tmp:
        home = Path(tmp)
        mem = ParametricMemory(home=home)
        ns = "bench"
        empty = _store_bytes(mem, home)
        keys: list[str] = []
        last_version = 0
        added_s = 0.0
        for mark in marks:
            t0 = time.perf_counter()
            while len(keys) < mark:
                key = f"doc-{len(keys):06d}"
                mem.add(_text(rng, len(keys)), document_id=key, namespace=ns)
                keys.append(key)
            batch_s = time.perf_counter() - t0
            added_s += batch_s
            last_version = _add_adapters(mem, ns, last_version)
            db_bytes, wal_bytes, blob_bytes = _store_bytes(mem, home)
            points.append(
                {
                    "documents": mark,
                    "add_docs_per_s": round((mark - (points[-1]["documents"] if points else 0)) / batch_s, 1),
                    "select": _select_latency(mem, ns, keys, rng),
                    "db_bytes": db_bytes,
                    "wal_bytes": wal_bytes,
                    "blob_bytes": blob_bytes,
                    "bytes_per_document": round((db_bytes + blob_bytes - empty[0] - empty[2]) / mark, 1),
                }
            )
            log.info("registry: %s", points[-1])
        mem.engine.dispose()
    return {
        "documents": n,
        "candidates_per_query": CANDIDATES,
        "queries": QUERIES,
        "empty_store_bytes": empty[0] + empty[2],
        "add_docs_per_s": round(n / added_s, 1),
        "points": points,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "note": "adapter rows are registry entries without weights; selection = one SQL lookup + routing",
    }


def plot(result: dict[str, Any], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    x = [p["documents"] for p in pts]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    axes[0].plot(x, [p["add_docs_per_s"] for p in pts], "o-")
    axes[0].set_title("add throughput (docs/s)")
    axes[1].plot(x, [p["select"]["p50_ms"] for p in pts], "o-", label="p50")
    axes[1].plot(x, [p["select"]["p95_ms"] for p in pts], "s--", label="p95")
    axes[1].set_title(f"adapter selection ({CANDIDATES} candidates), ms")
    axes[1].legend(fontsize=8)
    axes[2].plot(x, [(p["db_bytes"] + p["blob_bytes"]) / 2**20 for p in pts], "o-")
    axes[2].set_title("database file + blobs, MiB")
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.set_xscale("log")
        ax.set_xlabel("documents")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:  # pragma: no cover
    from bench._plotting_cli import main as cli_main

    cli_main("registry", __doc__ or "registry", run, plot)


if __name__ == "__main__":  # pragma: no cover
    main()
