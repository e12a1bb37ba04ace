"""Keeps a :class:`~memory.retrieval.VectorIndex` in step with the chunks of current document versions.

Embeddings are computed lazily (on the first search after a write) and stored on the ``chunks`` rows,
so they are computed once per chunk and embedding model, on SQLite and PostgreSQL alike. The in-process
index of a namespace is rebuilt from those rows when the namespace's set of current chunks changed
(a cheap signature query tells).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from memory.db import Chunk, Document, DocumentVersion, Namespace
from memory.retrieval import Embedder, VectorIndex, vector_from_bytes, vector_to_bytes
from memory.types import SearchHit

log = logging.getLogger(__name__)
_EMBED_BATCH = 256


def _current_chunks(ns: str):  # noqa: ANN202
    return (
        select(Chunk)
        .join(DocumentVersion, Chunk.version_id == DocumentVersion.id)
        .join(Document, Document.current_version_id == DocumentVersion.id)
        .join(Namespace, Document.namespace_id == Namespace.id)
        .where(Namespace.name == ns)
    )


class ChunkIndex:
    """Vector search over the current chunks of each namespace."""

    def __init__(self, sessions: sessionmaker[Session], embedder: Embedder) -> None:
        self._sessions = sessions
        self.embedder = embedder
        self.index = VectorIndex(dim=embedder.dim)
        # Stored on each chunk: an embedding is reused only for the same model and dimension.
        self.model_key = f"{embedder.name}:{embedder.dim}"[-128:]
        self._signatures: dict[str, tuple[Any, ...]] = {}
        self._lock = threading.Lock()

    def _signature(self, s: Session, ns: str) -> tuple[Any, ...]:
        """Changes whenever a chunk becomes or stops being current, or a document's metadata changes."""
        row = s.execute(
            _current_chunks(ns).with_only_columns(
                func.count(Chunk.id), func.max(Chunk.id), func.sum(Chunk.version_id), func.sum(Document.row_version))
        ).one()
        return tuple(row)

    def _embed_missing(self, ns: str) -> int:
        """Compute and store embeddings of current chunks that have none (or one from another model)."""
        done = 0
        while True:
            with self._sessions() as s:
                rows = s.execute(
                    _current_chunks(ns)
                    .where((Chunk.embedding.is_(None)) | (Chunk.embedding_model != self.model_key))
                    .with_only_columns(Chunk.id, Chunk.text)
                    .order_by(Chunk.id)
                    .limit(_EMBED_BATCH)
                ).all()
                if not rows:
                    return done
                vectors = self.embedder.embed_documents([r.text for r in rows])
                for r, v in zip(rows, vectors):
                    s.execute(
                        Chunk.__table__.update().where(Chunk.id == r.id)
                        .values(embedding=vector_to_bytes(v), embedding_model=self.model_key)
                    )
                s.commit()
            done += len(rows)

    def sync(self, ns: str) -> None:
        """Embed what is new and rebuild this namespace's partition if its current chunks changed."""
        with self._lock:
            self._embed_missing(ns)
            with self._sessions() as s:
                sig = self._signature(s, ns)
                if self._signatures.get(ns) == sig:
                    return
                rows = s.execute(
                    select(Chunk.id, Chunk.embedding, Chunk.meta, Document.key, Document.meta.label("doc_meta"),
                           DocumentVersion.number)
                    .join(DocumentVersion, Chunk.version_id == DocumentVersion.id)
                    .join(Document, Document.current_version_id == DocumentVersion.id)
                    .join(Namespace, Document.namespace_id == Namespace.id)
                    .where(Namespace.name == ns)
                ).all()
            self.index.delete(None, namespace=ns)
            if rows:
                import numpy as np

                vectors = np.stack([vector_from_bytes(r.embedding, self.embedder.dim) for r in rows])
                metadata = [{**(r.doc_meta or {}), "document_id": r.key, "version": r.number} for r in rows]
                self.index.add([str(r.id) for r in rows], vectors, metadata, namespace=ns)
            self._signatures[ns] = sig
            log.debug("indexed %d chunks of namespace %s", len(rows), ns)

    def search(self, query: str, *, k: int, ns: str, filter: dict[str, Any] | None) -> list[SearchHit]:
        self.sync(ns)
        hits = self.index.search(self.embedder.embed_query(query), k=k, namespace=ns, filter=filter)
        if not hits:
            return []
        ids = [int(h.id) for h in hits]
        with self._sessions() as s:
            rows = {r.id: r for r in s.execute(
                select(Chunk.id, Chunk.text, Chunk.ordinal, Chunk.meta, Document.key, Document.meta.label("doc_meta"),
                       DocumentVersion.number)
                .join(DocumentVersion, Chunk.version_id == DocumentVersion.id)
                .join(Document, Document.id == DocumentVersion.document_id)
                .where(Chunk.id.in_(ids))
            )}
        out = []
        for h in hits:
            r = rows.get(int(h.id))
            if r is None:  # deleted between the index sync and now
                continue
            out.append(SearchHit(chunk_id=r.id, document_id=r.key, version=r.number, ordinal=r.ordinal, text=r.text,
                                 score=float(h.score), metadata={**(r.doc_meta or {}), **(r.meta or {})}))
        return out
