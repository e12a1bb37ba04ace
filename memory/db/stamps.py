"""Change markers for retrieval indexes, written in the same transaction as the change.

Every flush that inserts, changes or deletes a :class:`~memory.db.models.Document` (new current version,
rollback, metadata, delete) or deletes a :class:`~memory.db.models.DocumentVersion` gives the document a
fresh ``index_stamp`` and its namespace a fresh ``index_stamp``. Both are random 128-bit tokens, so
they never repeat, even where SQLite reuses the row ids of deleted rows.

A process that keeps an index in memory reads one row (``namespaces.index_stamp``) to learn whether it
is still current, and keys each indexed chunk on ``(chunk id, document stamp)`` so that a diff against
the database finds exactly what changed.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from memory.db.models import Document, DocumentVersion, Namespace


def new_stamp() -> str:
    """A fresh random token (32 hex digits).

    >>> len(new_stamp()), new_stamp() != new_stamp()
    (32, True)
    """
    return uuid.uuid4().hex


@event.listens_for(Session, "before_flush")
def _stamp_changes(session: Session, _ctx: Any, _instances: Any) -> None:
    namespaces: set[int] = set()
    documents: set[int] = set()  # ids of documents whose versions are deleted
    for obj in session.new:
        if isinstance(obj, Document):
            obj.index_stamp = new_stamp()
            if obj.namespace_id is not None:
                namespaces.add(obj.namespace_id)
    for obj in session.dirty:
        if isinstance(obj, Document) and session.is_modified(obj, include_collections=False):
            obj.index_stamp = new_stamp()
            namespaces.add(obj.namespace_id)
    for obj in session.deleted:
        if isinstance(obj, Document):
            namespaces.add(obj.namespace_id)
        elif isinstance(obj, DocumentVersion):
            documents.add(obj.document_id)
    if not namespaces and not documents:
        return
    conn = session.connection()  # the flush's own transaction; no autoflush from here
    if documents:
        namespaces.update(conn.scalars(select(Document.namespace_id).where(Document.id.in_(sorted(documents)))))
        conn.execute(
            update(Document)
            .where(Document.id.in_(sorted(documents)))
            .values(index_stamp=new_stamp())
            .execution_options(synchronize_session=False)
        )
    conn.execute(update(Namespace).where(Namespace.id.in_(sorted(namespaces))).values(index_stamp=new_stamp()))
