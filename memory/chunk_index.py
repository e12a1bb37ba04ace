"""Vector search over the chunks of current document versions, in one of two backends.

Embeddings are computed lazily (on the first search after a write) and stored on the ``chunks`` rows,
so they are computed once per chunk and embedding model, on SQLite and PostgreSQL alike.

- **in-process** (the embedded default): a :class:`~memory.retrieval.VectorIndex` in this process. Each
  chunk is indexed under ``"<chunk id>/<document stamp>"``; the stamps are random tokens renewed in the
  same transaction as every document change (:mod:`memory.db.stamps`), so, unlike SQLite row ids, they
  never repeat. A search first reads the namespace's stamp (one row); when it changed, the chunks of the
  documents changed since the last sync are diffed against the indexed ones and only the difference is
  added or deleted, keeping the HNSW graph. Those documents are found by their change number, or, after a
  delete, by comparing every document's stamp. The index is saved under ``<home>/index/`` so that a new
  process loads it instead of rebuilding (a stale file is fine: the diff brings it up to date).
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from sqlalchemy import Table, select
from sqlalchemy.orm import Session, sessionmaker

from memory.db import Chunk, Document, DocumentVersion, Namespace
from memory.errors import ConfigError, IntegrityError
from memory.retrieval import Embedder, VectorIndex, vector_from_bytes, vector_to_bytes
from memory.retrieval.filters import compile_filter, filter_fields
from memory.retrieval.pgvector import EF_SEARCH, MAX_EF_SEARCH
from memory.types import SearchHit

log = logging.getLogger(__name__)
_EMBED_BATCH = 256
_FETCH_BATCH = 2_000
SAVE_AFTER = 1_000  # vectors added or removed since the last save after which a sync saves the index
BACKENDS = ("auto", "inprocess", "pgvector")
Backend = Literal["auto", "inprocess", "pgvector"]


def _current_chunks(ns: str) -> Any:
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
            "or set retrieval_backend='inprocess'"
        )
    return "inprocess"


# A chunk with what a search hit tells of it: its document's key and metadata, its version's number.
_HIT_ROWS = (
    select(
        Chunk.id,
        Chunk.text,
        Chunk.ordinal,
        Chunk.meta,
        Document.key,
        Document.meta.label("doc_meta"),
        DocumentVersion.number,
    )
    .join(DocumentVersion, Chunk.version_id == DocumentVersion.id)
    .join(Document, Document.id == DocumentVersion.document_id)
)


def _hit(r: Any, score: float) -> SearchHit:
    """A row of :data:`_HIT_ROWS` as a search hit: the document's metadata, then the chunk's (page, section)."""
    return SearchHit(
        chunk_id=r.id,
        document_id=r.key,
        version=r.number,
        ordinal=r.ordinal,
        text=r.text,
        score=float(score),
        metadata={**(r.doc_meta or {}), **(r.meta or {})},
    )


class ChunkIndex:
    """Vector search over the current chunks of each namespace (see the module docstring).

    Args:
        sessions: sessions on the memory's database.
        embedder: the embedding model (``memory.retrieval.Embedder``).
        backend: ``"auto"``, ``"inprocess"`` or ``"pgvector"`` (:func:`choose_backend`).
        path: where the in-process index is saved and loaded (``None``: never saved).
        ef_search: the HNSW candidate list at query time (``ef``; more finds more of the true nearest chunks
            and takes longer); ``None``: the backend's default (in-process 128, pgvector 100).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        embedder: Embedder,
        *,
        backend: str = "auto",
        path: str | Path | None = None,
        ef_search: int | None = None,
    ) -> None:
        self._sessions = sessions
        self.embedder = embedder
        # Stored on each chunk: an embedding is reused only for the same model and dimension.
        self.model_key = f"{embedder.name}:{embedder.dim}"[-128:]
        self._engine = sessions.kw["bind"]
        self.backend = choose_backend(backend, self._engine)
        self.path = Path(path) if path is not None and self.backend == "inprocess" else None
        self._synced: dict[str, str | None] = {}  # namespace -> its stamp when last brought up to date
        self._synced_at: dict[str, tuple[str | None, int]] = {}  # namespace -> its (epoch, number) then
        self._doc_stamps: dict[str, dict[int, str | None]] = {}  # namespace -> document id -> stamp last seen
        self._doc_keys: dict[str, dict[int, list[str]]] = {}  # in-process: namespace -> document id -> its keys
        self._lock = threading.Lock()
        self._unsaved = 0
        self.index = self._load() if self.backend == "inprocess" else None
        self._ef_search: int | None = None
        if ef_search is not None:
            self.ef_search = ef_search
        if self.backend == "pgvector":
            from memory.retrieval import pgvector

            pgvector.ensure_dim_index(self._engine, embedder.dim)
            self._iterative_scans = pgvector.version(self._engine) >= (0, 8)
        if self.path is not None:
            _OPEN.add(self)

    def __repr__(self) -> str:
        return f"ChunkIndex(backend={self.backend!r}, model={self.model_key!r})"

    @property
    def ef_search(self) -> int:
        """The HNSW candidate list at query time, on either backend (settable, e.g. to trade speed for recall)."""
        if self.index is not None:
            return self.index.expansion_search
        return self._ef_search or EF_SEARCH

    @ef_search.setter
    def ef_search(self, ef: int) -> None:
        if not isinstance(ef, int) or isinstance(ef, bool) or not 1 <= ef <= MAX_EF_SEARCH:
            raise ConfigError(f"ef_search must be between 1 and {MAX_EF_SEARCH}, got {ef!r}")
        self._ef_search = ef
        if self.index is not None:
            self.index.expansion_search = ef

    # ------------------------------------------------------------------ state
    def _marker(self, ns: str) -> Any:
        """The namespace's change marker (``index_stamp``, ``index_seq``, ``index_epoch``), ``None`` if it does not
        exist (:mod:`memory.db.stamps`)."""
        with self._sessions() as s:
            return s.execute(
                select(Namespace.index_stamp, Namespace.index_seq, Namespace.index_epoch).where(Namespace.name == ns)
            ).first()

    def _document_stamps(self, ns: str, since: int | None = None) -> dict[int, str | None]:
        """Document id -> stamp, for every document of ``ns``, or for those changed after number ``since``."""
        stmt = select(Document.id, Document.index_stamp).join(Namespace).where(Namespace.name == ns)
        if since is not None:
            stmt = stmt.where(Document.index_seq > since)
        with self._sessions() as s:
            return dict(s.execute(stmt).tuples().all())

    def _changed_documents(self, ns: str, since: int | None) -> list[int] | None:
        """Ids of the documents of ``ns`` changed (or deleted) since this process last looked, ``None`` the first
        time (all). Reads the stamps of the documents numbered above ``since`` when given, of all otherwise."""
        seen = self._doc_stamps.get(ns)
        stamps = self._document_stamps(ns, since if seen is not None else None)
        if seen is None:
            self._doc_stamps[ns] = stamps
            return None
        if since is not None:  # no document deleted since: the numbered ones are all that changed
            changed = sorted(d for d, stamp in stamps.items() if seen.get(d) != stamp or stamp is None)
            seen.update(stamps)
            return changed
        self._doc_stamps[ns] = stamps
        return sorted(d for d in set(seen) | set(stamps) if seen.get(d) != stamps.get(d) or stamps.get(d) is None)

    # ------------------------------------------------------------------ embeddings
    def _embed_changed(self, ns: str, since: int | None) -> None:
        """pgvector: embed the current chunks of the documents whose stamp changed since this process last
        looked (all of them the first time)."""
        changed = self._changed_documents(ns, since)
        if changed is None:
            self._embed_missing(ns)
            return
        for start in range(0, len(changed), _FETCH_BATCH):
            self._embed_missing(ns, changed[start : start + _FETCH_BATCH])

    def _embed_missing(self, ns: str, documents: list[int] | None = None) -> int:
        """pgvector: give every current chunk of ``ns`` (of ``documents`` when given) a ``chunk_vectors`` row for
        this model (embedding the chunks that have no stored embedding of this model)."""
        from memory.retrieval import pgvector

        cv = pgvector.chunk_vectors
        chunks = _current_chunks(ns) if documents is None else _current_chunks(ns).where(Document.id.in_(documents))
        missing = (
            chunks.outerjoin(cv, (cv.c.chunk_id == Chunk.id) & (cv.c.model == self.model_key))
            .where(cv.c.chunk_id.is_(None))
            .with_only_columns(Chunk.id, Chunk.text, Chunk.embedding, Chunk.embedding_model)
            .order_by(Chunk.id)
            .limit(_EMBED_BATCH)
        )
        done = 0
        while True:
            with self._sessions() as s:
                rows = s.execute(missing).all()
            if not rows:
                return done
            vectors = self._vectors(rows)
            with self._sessions() as s:
                s.execute(
                    pgvector.upsert_statement(),
                    [
                        {
                            "chunk_id": r.id,
                            "model": self.model_key,
                            "dim": self.embedder.dim,
                            "embedding": pgvector.vector_literal(v),
                        }
                        for r, v in zip(rows, vectors, strict=True)
                    ],
                )
                s.commit()
            done += len(rows)

    # ------------------------------------------------------------------ in-process index
    def sync(self, ns: str) -> None:
        """Bring this namespace up to date: embed new chunks, then (in-process) apply the diff to the index."""
        with self._lock:
            marker = self._marker(ns)  # read before the rows: a later change re-syncs next time
            if marker is not None and marker.index_stamp is not None and self._synced.get(ns) == marker.index_stamp:
                return
            epoch, seq = self._synced_at.get(ns, (None, 0))
            # Under the same epoch, the documents numbered above the last sync's number are all that changed.
            since = seq if marker is not None and epoch is not None and marker.index_epoch == epoch else None
            if self.index is not None:
                self._apply_diff(ns, since)  # embeds what it adds
            elif marker is not None:
                self._embed_changed(ns, since)
            self._synced[ns] = marker.index_stamp if marker is not None else None
            if marker is not None:
                self._synced_at[ns] = (marker.index_epoch, marker.index_seq)
            else:
                self._synced_at.pop(ns, None)
        if self._unsaved >= SAVE_AFTER:
            self.save()

    def _apply_diff(self, ns: str, since: int | None) -> None:
        """Make the index hold exactly the current chunks of ``ns``, each under ``<chunk id>/<document stamp>``.

        The first time in a process: diff every current chunk against the index (which may come from a saved,
        stale file), unless the saved file says how far it was synced (:meth:`save`): then compare every
        document's stamp with the file's, which also catches a database restored from a backup. Afterwards:
        read the stamps of the documents numbered above ``since`` (of all of them when ``since`` is ``None``),
        and re-read the chunks of those that changed.
        """
        assert self.index is not None
        restored = ns not in self._doc_keys and ns in self._doc_stamps  # sync state read from the saved file
        seen_before = self._doc_stamps[ns] if restored else {}  # replaced, not changed, by a diff of all (since None)
        changed = self._changed_documents(ns, None if restored else since)
        if restored:
            if not changed:
                return  # nothing changed since the file was saved; its keys are grouped when something does
            keys = self._keys_by_document(ns, seen_before)
            if keys is None:  # the file's keys do not match its documents: the full diff
                self._doc_stamps.pop(ns)
                changed = self._changed_documents(ns, None)
            else:
                self._doc_keys[ns] = keys
        keys_of = self._doc_keys.setdefault(ns, {})
        gone, new = self._diff_all(ns, keys_of) if changed is None else self._diff_documents(ns, changed, keys_of)
        if gone:
            self.index.delete(gone, namespace=ns)
        for start in range(0, len(new), _FETCH_BATCH):
            batch = new[start : start + _FETCH_BATCH]
            key_of = dict(batch)
            with self._sessions() as s:
                rows = s.execute(
                    select(
                        Chunk.id,
                        Chunk.text,
                        Chunk.embedding,
                        Chunk.embedding_model,
                        Document.key,
                        Document.meta.label("doc_meta"),
                        DocumentVersion.number,
                    )
                    .join(DocumentVersion, Chunk.version_id == DocumentVersion.id)
                    .join(Document, Document.id == DocumentVersion.document_id)
                    .where(Chunk.id.in_(list(key_of)))
                    .order_by(Chunk.id)
                ).all()
            vectors = self._vectors(rows)
            metadata = [filter_fields(r.doc_meta, r.key, r.number) for r in rows]
            self.index.add([key_of[r.id] for r in rows], vectors, metadata, namespace=ns)
        self._unsaved += len(gone) + len(new)
        if gone or new:
            log.debug("namespace %s: %d chunks indexed, %d removed", ns, len(new), len(gone))

    def _diff_all(self, ns: str, keys_of: dict[int, list[str]]) -> tuple[list[str], list[tuple[int, str]]]:
        """Every current chunk of ``ns`` against the index: the keys to remove and the (chunk id, key) to add."""
        assert self.index is not None
        with self._sessions() as s:
            rows = s.execute(
                _current_chunks(ns).with_only_columns(Chunk.id, Document.id.label("doc"), Document.index_stamp)
            ).all()
        keys_of.clear()
        current: dict[str, int] = {}
        for cid, doc, stamp in rows:
            key = f"{cid}/{stamp}"
            current[key] = cid
            keys_of.setdefault(doc, []).append(key)
        indexed = set(self.index.ids(ns))
        gone = [key for key in indexed if key not in current]
        return gone, sorted((cid, key) for key, cid in current.items() if key not in indexed)

    def _diff_documents(
        self, ns: str, changed: list[int], keys_of: dict[int, list[str]]
    ) -> tuple[list[str], list[tuple[int, str]]]:
        """The chunks of the ``changed`` documents: their keys in the index to remove, their current chunks to add."""
        gone = [key for d in changed for key in keys_of.pop(d, [])]
        new = []
        for start in range(0, len(changed), _FETCH_BATCH):
            with self._sessions() as s:
                rows = s.execute(
                    _current_chunks(ns)
                    .where(Document.id.in_(changed[start : start + _FETCH_BATCH]))
                    .with_only_columns(Chunk.id, Document.id.label("doc"), Document.index_stamp)
                ).all()
            for cid, doc, stamp in rows:
                key = f"{cid}/{stamp}"
                new.append((cid, key))
                keys_of.setdefault(doc, []).append(key)
        return gone, sorted(new)

    def _keys_by_document(self, ns: str, stamps: dict[int, str | None]) -> dict[int, list[str]] | None:
        """The index's keys of ``ns`` grouped by document, knowing each document's stamp (a key ends with its
        document's stamp); ``None`` when a key's stamp belongs to no document, or two documents share one."""
        assert self.index is not None
        doc_of: dict[str, int] = {}
        for doc, stamp in stamps.items():
            if stamp is None or stamp in doc_of:
                return None
            doc_of[stamp] = doc
        keys_of: dict[int, list[str]] = {}
        for key in self.index.ids(ns):
            owner = doc_of.get(key.partition("/")[2])
            if owner is None:
                return None
            keys_of.setdefault(owner, []).append(key)
        return keys_of

    def _vectors(self, rows: Sequence[Any]) -> np.ndarray:
        """The embeddings of these chunk rows, computing and storing those missing (or of another model)."""
        out = np.zeros((len(rows), self.embedder.dim), np.float32)
        fresh = []
        for i, r in enumerate(rows):
            if r.embedding is not None and r.embedding_model == self.model_key:
                out[i] = vector_from_bytes(r.embedding, self.embedder.dim)
            else:
                fresh.append(i)
        for start in range(0, len(fresh), _EMBED_BATCH):
            batch = fresh[start : start + _EMBED_BATCH]
            # Embedded with no transaction open: on SQLite every transaction holds the write lock
            # (BEGIN IMMEDIATE), and embedding a batch takes seconds.
            out[batch] = self.embedder.embed_documents([rows[i].text for i in batch])
            with self._sessions() as s:
                for i in batch:
                    # __table__ is the Table at run time; SQLAlchemy annotates it as a FromClause
                    s.execute(
                        cast(Table, Chunk.__table__)
                        .update()
                        .where(Chunk.id == rows[i].id)
                        .values(embedding=vector_to_bytes(out[i]), embedding_model=self.model_key)
                    )
                s.commit()
        return out

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
        self._restore_sync_state(idx.extra.get("synced"))
        return idx

    def _sync_state(self) -> dict[str, Any]:
        """How far each namespace of the index is synced: saved with it, so that the next process catches up from
        there instead of diffing every chunk (the namespace's change marker and every document's stamp)."""
        return {
            ns: {
                "stamp": self._synced.get(ns),
                "epoch": epoch,
                "seq": seq,
                "documents": {str(doc): stamp for doc, stamp in self._doc_stamps[ns].items()},
            }
            for ns, (epoch, seq) in self._synced_at.items()
            if ns in self._doc_stamps
        }

    def _restore_sync_state(self, saved: Any) -> None:
        if not saved:
            return
        try:
            state = {
                ns: (
                    rec["stamp"],
                    (rec["epoch"], int(rec["seq"])),
                    {int(doc): stamp for doc, stamp in rec["documents"].items()},
                )
                for ns, rec in saved.items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            log.warning("the saved retrieval index's sync state is unreadable (%s); diffing every chunk", e)
            return
        for ns, (stamp, at, stamps) in state.items():
            self._synced[ns], self._synced_at[ns], self._doc_stamps[ns] = stamp, at, stamps

    def save(self) -> None:
        """Save the in-process index (HNSW graphs built first) so that the next process starts from it."""
        if self.index is None or self.path is None:
            return
        with self._lock:
            self.index.prepare()
            self.index.save(self.path, extra={"synced": self._sync_state()})
            self._unsaved = 0

    # ------------------------------------------------------------------ search
    def search(self, query: str, *, k: int, ns: str, filter: dict[str, Any] | None) -> list[SearchHit]:
        """The ``k`` chunks of ``ns`` most similar to ``query`` among those matching ``filter``."""
        pred = compile_filter(filter)  # a malformed filter fails before any work
        self.sync(ns)
        qvec = np.asarray(self.embedder.embed_query(query), dtype=np.float32)
        if self.index is not None:
            found = [
                (int(h.id.split("/", 1)[0]), h.score) for h in self.index.search(qvec, k=k, namespace=ns, filter=filter)
            ]
        else:
            found = self._pg_search(qvec, k, ns, pred)
        if not found:
            return []
        with self._sessions() as s:
            rows = {r.id: r for r in s.execute(_HIT_ROWS.where(Chunk.id.in_([cid for cid, _ in found])))}
        # Ties (same score to 6 decimals) by chunk id, so both backends give one order; a chunk deleted between the
        # index sync and now is left out.
        ranked = sorted(found, key=lambda f: (-round(f[1], 6), f[0]))
        return [_hit(rows[cid], score) for cid, score in ranked if cid in rows]

    def document_chunks(self, ns: str, document_id: str) -> list[SearchHit]:
        """Every chunk of the current version of ``document_id`` in ``ns``, in order, as search hits of score 1 (the
        router's whole-document route); empty when there is no such document."""
        with self._sessions() as s:
            rows = s.execute(
                _HIT_ROWS.join(Namespace, Document.namespace_id == Namespace.id)
                .where(
                    Namespace.name == ns, Document.key == document_id, Document.current_version_id == DocumentVersion.id
                )
                .order_by(Chunk.ordinal)
            ).all()
        return [_hit(r, 1.0) for r in rows]

    def _pg_search(self, qvec: np.ndarray, k: int, ns: str, pred: Any) -> list[tuple[int, float]]:
        import sqlalchemy as sa

        from memory.retrieval import pgvector

        norm = float(np.linalg.norm(qvec))
        if norm == 0 or not np.isfinite(qvec).all():
            from memory.errors import ValidationError

            raise ValidationError("the query embedding is zero or not finite")
        cv = pgvector.chunk_vectors
        dist = pgvector.distance(self.embedder.dim, qvec / norm)
        own = (
            cv.c.model == self.model_key,
            cv.c.dim == sa.literal_column(str(int(self.embedder.dim))),
        )  # literal: the partial index's predicate
        where = pgvector.sql_filter(pred, _document_field)

        def current(stmt: Any, chunk_id: Any) -> Any:  # chunks of current versions in ns, through the filter
            stmt = (
                stmt.join(Chunk, Chunk.id == chunk_id)
                .join(DocumentVersion, Chunk.version_id == DocumentVersion.id)
                .join(Document, Document.current_version_id == DocumentVersion.id)
                .join(Namespace, Document.namespace_id == Namespace.id)
                .where(Namespace.name == ns)
            )
            return stmt if where is None else stmt.where(where)

        # The graph walk runs alone (ORDER BY the distance, LIMIT: the form an HNSW index serves), over-fetching
        # for the namespace and the filter, which are applied to its candidates; when fewer than k survive, it
        # fetches 8x more, then scans exactly.
        fetch = max(4 * k, 40)
        while True:
            exact = fetch > pgvector.MAX_EF_SEARCH
            if exact:
                stmt = current(select(Chunk.id, dist.label("dist")).select_from(cv), cv.c.chunk_id).where(*own)
            else:
                walk = select(cv.c.chunk_id, dist.label("dist")).where(*own).order_by(dist).limit(fetch).subquery()
                stmt = current(select(walk.c.chunk_id, walk.c.dist).select_from(walk), walk.c.chunk_id)
            stmt = stmt.order_by(sa.literal_column("dist")).limit(k)
            with self._engine.begin() as conn:
                pgvector.session_settings(
                    conn, fetch, ef_search=self.ef_search, iterative=self._iterative_scans, exact=exact
                )
                found = [(int(cid), 1.0 - float(d)) for cid, d in conn.execute(stmt)]
            if len(found) >= k or exact:
                return found
            fetch *= 8


def _document_field(field: str) -> Any:
    """A filter field of a document as ``jsonb`` (PostgreSQL), as :func:`filter_fields` defines it."""
    import sqlalchemy as sa
    from sqlalchemy.dialects.postgresql import JSONB

    if field == "document_id":
        return sa.func.to_jsonb(Document.key)
    if field == "version":
        return sa.func.to_jsonb(DocumentVersion.number)
    return sa.cast(Document.__table__.c.metadata, JSONB).op("->")(sa.bindparam(None, field, type_=sa.Text))


def matching_document_ids(
    sessions: sessionmaker[Session], ns: str, flt: dict[str, Any] | None, *, page: int = 1_000
) -> list[str]:
    """Ids of the documents of ``ns`` that ``flt`` matches (every one for ``None``), in id order.

    The filter sees what search sees (:func:`~memory.retrieval.filters.filter_fields`: the metadata, the
    ``document_id`` and the current ``version``). Documents are selected by query, a page at a time (keyset
    pagination), never through an id list; on PostgreSQL the filter runs in SQL.
    """
    from memory.retrieval import pgvector

    pred = compile_filter(flt)
    in_sql = pred is not None and sessions.kw["bind"].dialect.name == "postgresql"
    base = (
        select(Document.id, Document.key, Document.meta, DocumentVersion.number)
        .join(Namespace, Document.namespace_id == Namespace.id)
        .outerjoin(DocumentVersion, Document.current_version_id == DocumentVersion.id)
        .where(Namespace.name == ns)
        .order_by(Document.id)
        .limit(page)
    )
    clause = pgvector.sql_filter(pred, _document_field) if in_sql else None
    if clause is not None:
        base = base.where(clause)
    out: list[str] = []
    last = 0
    while True:
        with sessions() as s:
            rows = s.execute(base.where(Document.id > last)).all()
        out.extend(r.key for r in rows if in_sql or pred is None or pred(filter_fields(r.meta, r.key, r.number)))
        if len(rows) < page:
            return out
        last = rows[-1].id


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
