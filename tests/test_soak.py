"""Soak (issue 14): 4 processes add, update, roll back, delete, gc and search one namespace for a bounded
time, on SQLite and on PostgreSQL; afterwards the store must be whole.

Checked afterwards: every current document's text reads back with a valid hash; every version's blob
exists and no blob is unreferenced; no version, chunk or document row is orphaned or half-written; and the
long-lived handle's vector index returns what a freshly rebuilt index returns.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import random
import time
import traceback

import pytest
from _embedders import BagOfWords

from memory.api import ParametricMemory

pytestmark = [pytest.mark.slow, pytest.mark.services]

NS = "soak"
SECONDS = 25.0
IDS = [f"doc{i}" for i in range(8)]
WORDS = "vault locker parking badge invoice refund travel leave laptop coffee printer visitor".split()


def _text(rng: random.Random) -> str:
    # A small pool of texts, so that documents share blobs and deletes race with adds of the same bytes.
    k = rng.randrange(12)
    return f"Note {k}: the {WORDS[k]} rule. " + " ".join(WORDS[(k + j) % len(WORDS)] for j in range(20)) + "."


def _worker(settings, seed: int, seconds: float, out) -> None:
    from memory.errors import ConflictError, NotFoundError

    rng = random.Random(seed)
    mem = ParametricMemory(settings, embedder=BagOfWords())
    counts: dict[str, int] = {}
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            op = rng.choice(["add", "add", "update", "rollback", "delete", "gc", "search"])
            doc = rng.choice(IDS)
            try:
                if op in ("add", "update"):
                    mem.add(_text(rng), document_id=doc, namespace=NS, metadata={"w": seed})
                elif op == "rollback":
                    mem.rollback(doc, rng.randint(1, 3), namespace=NS)
                elif op == "delete":
                    mem.delete(doc, namespace=NS)
                elif op == "gc":
                    mem.gc()
                else:
                    mem.search(rng.choice(WORDS), k=3, namespace=NS)
                counts[op] = counts.get(op, 0) + 1
            except (NotFoundError, ConflictError):  # a document another process deleted: expected
                counts["expected_errors"] = counts.get("expected_errors", 0) + 1
        out.put(("ok", seed, counts))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        out.put(("error", seed, traceback.format_exc()))


def test_soak_four_processes_leave_a_whole_store(backend_settings):
    from sqlalchemy import func, select

    from memory.chunk_index import ChunkIndex
    from memory.db import Adapter, Chunk, Document, DocumentVersion

    mem = ParametricMemory(backend_settings, embedder=BagOfWords())
    mem.add(_text(random.Random(0)), document_id="doc0", namespace=NS)
    mem.search("vault", k=3, namespace=NS)  # the long-lived handle builds its index before the soak
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(backend_settings, seed, SECONDS, out)) for seed in range(1, 5)]
    for p in procs:
        p.start()
    reports = [out.get(timeout=SECONDS + 180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [r for r in reports if r[0] != "ok"]
    assert not errors, errors[0][2]
    ops = sum(sum(r[2].values()) for r in reports)
    assert ops > 40, reports  # the soak really did something

    # 1. every current document reads back with a valid hash
    docs = mem.list(namespace=NS, limit=1000)
    for d in docs:
        text = mem.get(d.id, namespace=NS, with_text=True).text
        assert hashlib.sha256(text.encode()).hexdigest() == d.version.content_sha256
    # 2. every referenced blob exists, no blob is unreferenced
    with mem.records.tx() as s:
        shas = set(s.scalars(select(DocumentVersion.content_sha256)))
        shas |= {b for b in s.scalars(select(Adapter.blob_sha256)) if b}
        # 3. no orphan or half-written rows
        assert s.scalar(select(func.count()).select_from(Document).where(Document.current_version_id.is_(None))) == 0
        assert (
            s.scalar(
                select(func.count())
                .select_from(DocumentVersion)
                .where(~DocumentVersion.document_id.in_(select(Document.id)))
            )
            == 0
        )
        assert (
            s.scalar(select(func.count()).select_from(Chunk).where(~Chunk.version_id.in_(select(DocumentVersion.id))))
            == 0
        )
        for v in s.scalars(select(DocumentVersion)):
            n = s.scalar(select(func.count()).select_from(Chunk).where(Chunk.version_id == v.id))
            assert n == v.chunk_count > 0, (v.id, n, v.chunk_count)
            doc = s.get(Document, v.document_id)
            assert doc is not None
        for doc in s.scalars(select(Document)):
            assert s.get(DocumentVersion, doc.current_version_id).document_id == doc.id
    missing = [sha for sha in shas if not mem.blobs.exists(sha)]
    assert not missing
    assert mem.gc(dry_run=True) == []
    # 4. the long-lived index agrees with a fresh rebuild
    fresh = ChunkIndex(mem.records.sessions, BagOfWords(), backend="inprocess", path=None)
    for q in WORDS:  # k above the number of current chunks: ties at the cut cannot differ
        got = sorted((-round(h.score, 5), h.chunk_id, h.text) for h in mem.search(q, k=100, namespace=NS))
        want = sorted((-round(h.score, 5), h.chunk_id, h.text) for h in fresh.search(q, k=100, ns=NS, filter=None))
        assert got == want and len(got) == sum(d.version.chunk_count for d in docs), q
