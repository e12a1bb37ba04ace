"""Vector search over the chunks of current document versions, in one of two backends.

Embeddings are computed lazily (on the first search after a write) and stored on the ``chunks`` rows,
so they are computed once per chunk and embedding model, on SQLite and PostgreSQL alike.

- **in-process** (the embedded default): a :class:`~memory.retrieval.VectorIndex` in this process. Each
  chunk is indexed under ``"<chunk id>/<document stamp>"``; the stamps are random tokens renewed in the
  same transaction as every document change (:mod:`memory.db.stamps`), so, unlike SQLite row ids, they
  never repeat. A search first reads the namespace's stamp (one row); when it changed, the ids of the
  current chunks are diffed against the indexed ones and only the difference is added or deleted, keeping
  the HNSW graph. The index is saved under ``<home>/index/`` so that a new process loads it instead of
  rebuilding (a stale file is fine: the diff brings it up to date).
- **pgvector** (chosen automatically on PostgreSQL when migration 0004 found the ``vector`` extension):
  embeddings in ``chunk_vectors`` with an HNSW index, filters compiled to SQL
  (:mod:`memory.retrieval.pgvector`). Nothing is held in memory, and every process sees every commit.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
import weakref
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from memory.db import Chunk, Document, DocumentVersion, Namespace
from memory.errors import ConfigError, IntegrityError
from memory.retrieval import Embedder, VectorIndex, vector_from_bytes, vector_to_bytes
from memory.retrieval.filters import compile_filter, filter_fields
from memory.types import SearchHit

log = logging.getLogger(__name__)
_EMBED_BATCH = 256
_FETCH_BATCH = 2_000
SAVE_AFTER = 1_000  # vectors added or removed since the last save after which a sync saves the index
BACKENDS = ("auto", "inprocess", "pgvector")
Backend = Literal["auto", "inprocess", "pgvector"]


def _current_chunks(ns: str):  # noqa: ANN202
    return (
        select(Chunk)
        .join(DocumentVersion, Chunk.version_id == DocumentVersion.id)
        .join(Document, Document.current_version_id == DocumentVersion.id)
        .join(Namespace, Document.namespace_id == Namespace.id)
        .where(Namespace.name == ns)
    )


def choose_backend(requested: str, engine: Any) -> str:
    """``inprocess`` or ``pgvector`` for the ``retrieval_backend`` setting and this database.

    ``auto`` picks pgvector on PostgreSQL when the ``chunk_vectors`` table exists (migration 0004 ran
    with the ``vector`` extension available), in-process otherwise.

    >>> from sqlalchemy import create_engine
    >>> choose_backend("auto", create_engine("sqlite://"))
    'inprocess'
    """
    from memory.retrieval import pgvector

    if requested not in BACKENDS:
        raise ConfigError(f"retrieval_backend must be one of {', '.join(BACKENDS)}, got {requested!r}")
    if requested == "inprocess":
        return "inprocess"
    if pgvector.available(engine):
        return "pgvector"
    if requested == "pgvector":
        raise ConfigError(
            "retrieval_backend='pgvector' needs PostgreSQL with the vector extension and the chunk_vectors table: "
            "run `CREATE EXTENSION vector` as a superuser, then `pmem db downgrade 0002 && pmem db upgrade`, "
            "or set retrieval_backend='inprocess'")
    return "inprocess"


class ChunkIndex:
    """Vector search over the current chunks of each namespace (see the module docstring).

    Args:
        sessions: sessions on the memory's database.
        embedder: the embedding model (``memory.retrieval.Embedder``).
        backend: ``"auto"``, ``"inprocess"`` or ``"pgvector"`` (:func:`choose_backend`).
        path: where the in-process index is saved and loaded (``None``: never saved).
    """

    def __init__(self, sessions: sessionmaker[Session], embedder: Embedder, *, backend: str = "auto",
                 path: str | Path | None = None) -> None:
        self._sessions = sessions
        self.embedder = embedder
        # Stored on each chunk: an embedding is reused only for the same model and dimension.
        self.model_key = f"{embedder.name}:{embedder.dim}"[-128:]
        self._engine = sessions.kw["bind"]
        self.backend = choose_backend(backend, self._engine)
        self.path = Path(path) if path is not None and self.backend == "inprocess" else None
        self._synced: dict[str, str | None] = {}  # namespace -> its stamp when last brought up to date
        self._lock = threading.Lock()
        self._unsaved = 0
        self.index = self._load() if self.backend == "inprocess" else None
        if self.backend == "pgvector":
            from memory.retrieval import pgvector

            pgvector.ensure_dim_index(self._engine, embedder.dim)
            self._iterative_scans = pgvector.version(self._engine) >= (0, 8)
        if self.path is not None:
            _OPEN.add(self)

    def __repr__(self) -> str:
        return f"ChunkIndex(backend={self.backend!r}, model={self.model_key!r})"

    # ------------------------------------------------------------------ state
    def _stamp(self, ns: str) -> tuple[bool, str | None]:
        """Whether the namespace exists, and its change marker."""
        with self._sessions() as s:
            row = s.execute(select(Namespace.index_stamp).where(Namespace.name == ns)).first()
        return (row is not None, row[0] if row else None)

    def _up_to_date(self, ns: str, exists: bool, stamp: str | None) -> bool:
        return exists and stamp is not None and self._synced.get(ns) == stamp

    # ------------------------------------------------------------------ embeddings
    def _embed_missing(self, ns: str) -> int:
        """Compute and store embeddings of current chunks that have none for this model (pgvector: no row)."""
        pg = self.backend == "pgvector"
        if pg:
            from memory.retrieval import pgvector

            cv = pgvector.chunk_vectors
            missing = (_current_chunks(ns).outerjoin(cv, (cv.c.chunk_id == Chunk.id) & (cv.c.model == self.model_key))
                       .where(cv.c.chunk_id.is_(None)))
        else:
            missing = _current_chunks(ns).where((Chunk.embedding.is_(None)) | (Chunk.embedding_model != self.model_key))
        done = 0
        while True:
            with self._sessions() as s:
                rows = s.execute(missing.with_only_columns(Chunk.id, Chunk.text, Chunk.embedding, Chunk.embedding_model)
                                 .order_by(Chunk.id).limit(_EMBED_BATCH)).all()
            if not rows:
                return done
            # Embedded with no transaction open: on SQLite every transaction holds the write lock
            # (BEGIN IMMEDIATE), and embedding a batch takes seconds.
            fresh = [r for r in rows if r.embedding is None or r.embedding_model != self.model_key]
            computed = dict(zip((r.id for r in fresh), self.embedder.embed_documents([r.text for r in fresh])))
            with self._sessions() as s:
                for r in fresh:  # chunk rows never change text: no re-check needed
                    s.execute(Chunk.__table__.update().where(Chunk.id == r.id)
                              .values(embedding=vector_to_bytes(computed[r.id]), embedding_model=self.model_key))
                if pg:
                    s.execute(pgvector.upsert_statement(), [
                        {"chunk_id": r.id, "model": self.model_key, "dim": self.embedder.dim,
                         "embedding": pgvector.vector_literal(
                             computed[r.id] if r.id in computed else vector_from_bytes(r.embedding, self.embedder.dim))}
                        for r in rows])
                s.commit()
            done += len(rows)

    # ------------------------------------------------------------------ in-process index
    def sync(self, ns: str) -> None:
        """Bring this namespace up to date: embed new chunks, then (in-process) apply the diff to the index."""
        with self._lock:
            exists, stamp = self._stamp(ns)  # read before the rows: a later change re-syncs next time
            if self._up_to_date(ns, exists, stamp):
                return
            if exists:
                self._embed_missing(ns)
            if self.index is not None:
                self._apply_diff(ns)
            self._synced[ns] = stamp if exists else None
        if self._unsaved >= SAVE_AFTER:
            self.save()

    def _apply_diff(self, ns: str) -> None:
        assert self.index is not None
        with self._sessions() as s:
            current = {f"{cid}/{stamp}": cid for cid, stamp in s.execute(
                _current_chunks(ns).with_only_columns(Chunk.id, Document.index_stamp))}
        indexed = set(self.index.ids(ns))
        gone = [key for key in indexed if key not in current]
        new = sorted((cid, key) for key, cid in current.items() if key not in indexed)
        if gone:
            self.index.delete(gone, namespace=ns)
        for start in range(0, len(new), _FETCH_BATCH):
            batch = new[start : start + _FETCH_BATCH]
            key_of = {cid: key for cid, key in batch}
            with self._sessions() as s:
                rows = s.execute(
                    select(Chunk.id, Chunk.text, Chunk.embedding, Chunk.embedding_model, Document.key,
                           Document.meta.label("doc_meta"), DocumentVersion.number)
                    .join(DocumentVersion, Chunk.version_id == DocumentVersion.id)
                    .join(Document, Document.id == DocumentVersion.document_id)
                    .where(Chunk.id.in_(list(key_of)))
                    .order_by(Chunk.id)
                ).all()
            vectors = np.stack([
                vector_from_bytes(r.embedding, self.embedder.dim) if r.embedding_model == self.model_key
                else self.embedder.embed_documents([r.text])[0]  # re-embedded by another model since
                for r in rows]) if rows else np.zeros((0, self.embedder.dim), np.float32)
            metadata = [filter_fields(r.doc_meta, r.key, r.number) for r in rows]
            self.index.add([key_of[r.id] for r in rows], vectors, metadata, namespace=ns)
        self._unsaved += len(gone) + len(new)
        if gone or new:
            log.debug("namespace %s: %d chunks indexed, %d removed", ns, len(new), len(gone))

    def _load(self) -> VectorIndex:
        fresh = VectorIndex(dim=self.embedder.dim, model=self.model_key)
        if self.path is None or not self.path.is_file():
            return fresh
        try:
            idx = VectorIndex.load(self.path)
        except IntegrityError as e:
            log.warning("ignoring the saved retrieval index: %s", e)
            return fresh
        if idx.model != self.model_key or idx.dim not in (None, self.embedder.dim):
            log.info("saved retrieval index %s is for another embedding model; rebuilding", self.path)
            return fresh
        log.info("loaded the retrieval index %s (%d vectors)", self.path, len(idx))
        return idx

    def save(self) -> None:
        """Save the in-process index (HNSW graphs built first) so that the next process starts from it."""
        if self.index is None or self.path is None:
            return
        with self._lock:
            self.index.prepare()
            self.index.save(self.path)
            self._unsaved = 0

    # ------------------------------------------------------------------ search
    def search(self, query: str, *, k: int, ns: str, filter: dict[str, Any] | None) -> list[SearchHit]:
        """The ``k`` chunks of ``ns`` most similar to ``query`` among those matching ``filter``."""
        pred = compile_filter(filter)  # a malformed filter fails before any work
        self.sync(ns)
        qvec = np.asarray(self.embedder.embed_query(query), dtype=np.float32)
        if self.index is not None:
            found = [(int(h.id.split("/", 1)[0]), h.score) for h in
                     self.index.search(qvec, k=k, namespace=ns, filter=filter)]
        else:
            found = self._pg_search(qvec, k, ns, pred)
        if not found:
            return []
        with self._sessions() as s:
            rows = {r.id: r for r in s.execute(
                select(Chunk.id, Chunk.text, Chunk.ordinal, Chunk.meta, Document.key, Document.meta.label("doc_meta"),
                       DocumentVersion.number)
                .join(DocumentVersion, Chunk.version_id == DocumentVersion.id)
                .join(Document, Document.id == DocumentVersion.document_id)
                .where(Chunk.id.in_([cid for cid, _ in found]))
            )}
        out = []
        # Ties (same score to 6 decimals) by chunk id, so both backends give one order.
        for cid, score in sorted(found, key=lambda f: (-round(f[1], 6), f[0])):
            r = rows.get(cid)
            if r is None:  # deleted between the index sync and now
                continue
            out.append(SearchHit(chunk_id=r.id, document_id=r.key, version=r.number, ordinal=r.ordinal, text=r.text,
                                 score=float(score), metadata={**(r.doc_meta or {}), **(r.meta or {})}))
        return out

    def _pg_search(self, qvec: np.ndarray, k: int, ns: str, pred: Any) -> list[tuple[int, float]]:
        import sqlalchemy as sa
        from sqlalchemy.dialects.postgresql import JSONB

        from memory.retrieval import pgvector

        norm = float(np.linalg.norm(qvec))
        if norm == 0 or not np.isfinite(qvec).all():
            from memory.errors import ValidationError

            raise ValidationError("the query embedding is zero or not finite")
        cv = pgvector.chunk_vectors
        dist = pgvector.distance(self.embedder.dim, qvec / norm).label("dist")
        doc_meta = sa.cast(Document.__table__.c.metadata, JSONB)

        def value_of(field: str) -> Any:
            if field == "document_id":
                return sa.func.to_jsonb(Document.key)
            if field == "version":
                return sa.func.to_jsonb(DocumentVersion.number)
            return doc_meta.op("->")(sa.bindparam(None, field, type_=sa.Text))

        stmt = (select(Chunk.id, dist)
                .select_from(cv)
                .join(Chunk, Chunk.id == cv.c.chunk_id)
                .join(DocumentVersion, Chunk.version_id == DocumentVersion.id)
                .join(Document, Document.current_version_id == DocumentVersion.id)
                .join(Namespace, Document.namespace_id == Namespace.id)
                .where(Namespace.name == ns, cv.c.model == self.model_key,
                       cv.c.dim == sa.literal_column(str(int(self.embedder.dim))))  # literal: the partial index's predicate
                .order_by(dist, Chunk.id).limit(k))
        where = pgvector.sql_filter(pred, value_of)
        if where is not None:
            stmt = stmt.where(where)
        for exact in (False, True):  # the graph may give fewer than k matching rows: then scan exactly
            with self._engine.begin() as conn:
                pgvector.session_settings(conn, k, iterative=self._iterative_scans, exact=exact)
                found = [(int(cid), 1.0 - float(d)) for cid, d in conn.execute(stmt)]
            if len(found) >= k:
                break
        return found


_OPEN: weakref.WeakSet[ChunkIndex] = weakref.WeakSet()


@atexit.register
def _save_open_indexes() -> None:
    for idx in list(_OPEN):
        if idx._unsaved:
            try:
                idx.save()
            except Exception as e:  # noqa: BLE001  (exiting: a lost snapshot only costs a rebuild)
                log.warning("could not save the retrieval index %s: %s", idx.path, e)


def index_path(home: Path, database_url: str, model_key: str) -> Path:
    """Where the in-process index of this database and embedding model is saved.

    >>> index_path(Path("/h"), "sqlite:////h/pmem.db", "m:384").parent
    PosixPath('/h/index')
    """
    digest = hashlib.sha256(f"{database_url}\0{model_key}".encode()).hexdigest()[:16]
    return home / "index" / f"chunks-{digest}.npz"
