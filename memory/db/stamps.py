"""Change markers for retrieval indexes, written in the same transaction as the change.

Every flush that inserts, changes or deletes a :class:`~memory.db.models.Document` (new current version,
rollback, metadata, delete) or deletes a :class:`~memory.db.models.DocumentVersion` gives the document a
fresh ``index_stamp`` and its namespace a fresh ``index_stamp``. Both are random 128-bit tokens, so
they never repeat, even where SQLite reuses the row ids of deleted rows.

Each such change also gets a number, ``namespaces.index_seq`` + 1, which every document it touched keeps
as its ``index_seq``; a change that deletes a document also renews ``namespaces.index_epoch`` (a token
that is also new with every namespace row).

A process that keeps an index in memory reads one row (``namespaces``) to learn whether it is still
current, and keys each indexed chunk on ``(chunk id, document stamp)`` so that a diff against the
database finds exactly what changed. When the epoch is the one it last synced under (at number ``s``), the
documents numbered above ``s`` are all that changed; otherwise it compares every document's stamp.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event, select, update
from sqlalchemy.orm import Session

from memory.db.models import Document, DocumentVersion, Namespace, new_stamp


@event.listens_for(Session, "before_flush")
def _stamp_changes(session: Session, _ctx: Any, _instances: Any) -> None:
    changed = [obj for obj in session.new if isinstance(obj, Document)]
    changed += [
        obj
        for obj in session.dirty
        if isinstance(obj, Document) and session.is_modified(obj, include_collections=False)
    ]
    removed_from = {obj.namespace_id for obj in session.deleted if isinstance(obj, Document)}
    pruned = {obj.document_id for obj in session.deleted if isinstance(obj, DocumentVersion)}  # their document changes
    if not changed and not removed_from and not pruned:
        return
    conn = session.connection()  # the flush's own transaction; no autoflush from here
    namespace_of: dict[int, int] = {}
    if pruned:
        rows = conn.execute(select(Document.id, Document.namespace_id).where(Document.id.in_(sorted(pruned))))
        namespace_of = dict(rows.tuples().all())
    namespaces = {d.namespace_id for d in changed if d.namespace_id is not None} | removed_from
    seq: dict[int, int] = {}
    # One numbered change per namespace; its row stays locked until commit, so on PostgreSQL the numbers of
    # a namespace are given in commit order.
    for ns_id in sorted(namespaces | set(namespace_of.values())):
        values: dict[str, Any] = {"index_stamp": new_stamp(), "index_seq": Namespace.index_seq + 1}
        if ns_id in removed_from:
            values["index_epoch"] = new_stamp()
        stmt = update(Namespace).where(Namespace.id == ns_id).values(**values).returning(Namespace.index_seq)
        seq[ns_id] = conn.execute(stmt).scalar_one()
    for doc in changed:
        doc.index_stamp = new_stamp()
        if doc.namespace_id in seq:
            doc.index_seq = seq[doc.namespace_id]
    for doc_id, ns_id in sorted(namespace_of.items()):
        conn.execute(
            update(Document)
            .where(Document.id == doc_id)
            .values(index_stamp=new_stamp(), index_seq=seq[ns_id])
            .execution_options(synchronize_session=False)
        )


__all__ = ["new_stamp"]
