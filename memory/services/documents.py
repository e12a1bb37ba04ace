"""Documents and their versions: add, read, find (list), history, diff, rollback, delete, blob gc.

A document's text is stored once per distinct content (a blob named by its SHA-256) and every change is a
new :class:`~memory.db.DocumentVersion` with its chunks; nothing here knows about models or adapters beyond
their status rows. Reads of many documents or versions run a fixed number of queries, whatever their count.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memory.db import Adapter, AdapterStatus, Chunk, Document, DocumentVersion, Namespace, Source
from memory.db.models import as_utc
from memory.errors import NotFoundError, ValidationError
from memory.ingest import chunk_text, content_hash, normalize_text
from memory.services.records import Records, check_int, check_text_field, validate_document_id, validate_metadata
from memory.types import AddResult, AddStatus, ChunkInfo, DeleteResult, DocumentInfo, VersionInfo

log = logging.getLogger(__name__)
_MAX_TITLE = 512  # Document.title's column width
_MAX_SOURCE = 2048  # Source.uri's


def check_text(text: Any, max_bytes: int) -> str:
    """``text`` (str or UTF-8 bytes) normalised, or a :class:`ValidationError` that says what is wrong with it.

    >>> check_text(b"Hello\\r\\nworld", 100)
    'Hello\\nworld'
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValidationError(
                f"document bytes are not UTF-8 text ({e.reason} at byte {e.start}); decode them first or "
                "add the file by path so its encoding is detected"
            ) from None
    if not isinstance(text, str):
        raise ValidationError(f"document text must be str or UTF-8 bytes, got {type(text).__name__}")
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise ValidationError(
            f"document is {size:,} bytes, over the limit of {max_bytes:,} (PMEM_MAX_DOCUMENT_BYTES); split it first"
        )
    sample = text[:65536]
    if "\x00" in text:
        raise ValidationError("document contains NUL bytes: this looks like binary data, not text")
    controls = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f\v")
    if sample and controls / len(sample) > 0.05:
        raise ValidationError(
            f"document has {controls} control characters in its first {len(sample)}: binary data, not text"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("document contains unpaired surrogates; it is not valid Unicode text") from None
    normalised = normalize_text(text)
    if not normalised.strip():
        raise ValidationError("document is empty (only whitespace); nothing to remember")
    return normalised


def version_info(v: DocumentVersion, current_id: int | None, adapter_status: str | None = None) -> VersionInfo:
    return VersionInfo(
        number=v.number,
        content_sha256=v.content_sha256,
        is_current=v.id == current_id,
        byte_count=v.byte_count,
        token_count=v.token_count,
        chunk_count=v.chunk_count,
        parser=dict(v.parser or {}),
        created_at=as_utc(v.created_at),
        adapter_status=adapter_status,
    )


def _adapter_statuses(s: Session, version_ids: Sequence[int]) -> dict[int, str]:
    """The status of the newest adapter of each of ``version_ids`` (one query)."""
    if not version_ids:
        return {}
    out: dict[int, str] = {}
    for vid, status in s.execute(
        select(Adapter.version_id, Adapter.status).where(Adapter.version_id.in_(list(version_ids))).order_by(Adapter.id)
    ):
        if vid is not None:
            out[vid] = status.value  # ascending ids: the newest wins
    return out


def make_current(s: Session, doc: Document, version: DocumentVersion) -> None:
    """Point the document at ``version``; its adapters become ready again, the old ones superseded."""
    old = doc.current_version_id
    doc.current_version_id = version.id
    if old is not None and old != version.id:
        for a in s.scalars(select(Adapter).where(Adapter.version_id == old, Adapter.status == AdapterStatus.ready)):
            a.status = AdapterStatus.superseded
    for a in s.scalars(
        select(Adapter).where(Adapter.version_id == version.id, Adapter.status == AdapterStatus.superseded)
    ):
        a.status = AdapterStatus.ready


class DocumentStore:
    """Document CRUD with versions, and removal of blobs no row references.

    Args:
        records: the shared database and blob store.
        max_document_bytes: the size limit of one document's text.
        chunk_tokens: the chunk size used when the caller passes no chunks.
    """

    def __init__(self, records: Records, *, max_document_bytes: int, chunk_tokens: int) -> None:
        self.records = records
        self.max_document_bytes = max_document_bytes
        self.chunk_tokens = chunk_tokens

    # ------------------------------------------------------------ conversion
    def infos(self, s: Session, docs: Sequence[Document], namespace: str) -> list[DocumentInfo]:
        """Documents as :class:`DocumentInfo`, in order, in four queries whatever their number."""
        if not docs:
            return []
        current_ids = [d.current_version_id for d in docs if d.current_version_id]
        current = (
            {v.id: v for v in s.scalars(select(DocumentVersion).where(DocumentVersion.id.in_(current_ids)))}
            if current_ids
            else {}
        )
        counts = dict(
            s.execute(
                select(DocumentVersion.document_id, func.count())
                .where(DocumentVersion.document_id.in_([d.id for d in docs]))
                .group_by(DocumentVersion.document_id)
            )
            .tuples()
            .all()
        )
        source_ids = {d.source_id for d in docs if d.source_id}
        sources = (
            dict(s.execute(select(Source.id, Source.uri).where(Source.id.in_(source_ids))).tuples().all())
            if source_ids
            else {}
        )
        statuses = _adapter_statuses(s, current_ids)
        out = []
        for doc in docs:
            cur = current.get(doc.current_version_id) if doc.current_version_id else None
            out.append(
                DocumentInfo(
                    id=doc.key,
                    namespace=namespace,
                    title=doc.title,
                    metadata=dict(doc.meta or {}),
                    version=version_info(cur, doc.current_version_id, statuses.get(cur.id)) if cur else None,
                    version_count=counts.get(doc.id, 0),
                    source=sources.get(doc.source_id) if doc.source_id else None,
                    created_at=as_utc(doc.created_at),
                    updated_at=as_utc(doc.updated_at),
                )
            )
        return out

    def info(self, s: Session, doc: Document, namespace: str) -> DocumentInfo:
        return self.infos(s, [doc], namespace)[0]

    # ------------------------------------------------------------ write
    def add(
        self,
        text: str | bytes,
        *,
        document_id: str | None = None,
        namespace: str | None = None,
        title: str | None = None,
        metadata: dict[str, Any] | None = None,
        parser: dict[str, Any] | None = None,
        source: str | None = None,
        chunks: list[Any] | None = None,
    ) -> AddResult:
        """See :meth:`memory.api.ParametricMemory.add`."""
        rec = self.records
        ns = rec.namespace(namespace)
        normalised = check_text(text, self.max_document_bytes)
        sha = content_hash(normalised)
        doc_id = validate_document_id(document_id) if document_id is not None else f"doc-{sha[:16]}"
        if metadata is not None:
            validate_metadata(metadata)
        if title is not None and (not isinstance(title, str) or len(title) > _MAX_TITLE):
            raise ValidationError(f"title must be a string of at most {_MAX_TITLE} characters")
        if title is not None:
            check_text_field("title", title)
        if source is not None and len(source) > _MAX_SOURCE:
            raise ValidationError(f"source {source[:80]!r}... is over {_MAX_SOURCE} characters")
        specs = chunks if chunks is not None else chunk_text(normalised, self.chunk_tokens)
        data = normalised.encode("utf-8")
        # The blob is written before the rows that reference it; if the transaction fails, it is removed.
        blob_existed = rec.blobs.exists(sha)
        rec.blobs.put(data)

        def write(s: Session) -> AddResult:
            rec.hold_blob(s, sha, data)
            ns_row = rec.namespace_row(s, ns, create=True)
            assert ns_row is not None
            doc = s.scalar(select(Document).where(Document.namespace_id == ns_row.id, Document.key == doc_id))
            status: AddStatus
            if doc is None:
                doc = Document(namespace_id=ns_row.id, key=doc_id, title=title, meta=metadata or {})
                s.add(doc)
                s.flush()
                status = "created"
            else:
                status = "new_version"
                if title is not None:
                    doc.title = title
                if metadata is not None:
                    doc.meta = metadata
            if source is not None:
                src = s.scalar(select(Source).where(Source.namespace_id == ns_row.id, Source.uri == source))
                if src is None:
                    src = Source(namespace_id=ns_row.id, uri=source, kind="file", parser=parser)
                    s.add(src)
                    s.flush()
                doc.source_id = src.id
            existing = s.scalar(
                select(DocumentVersion).where(
                    DocumentVersion.document_id == doc.id, DocumentVersion.content_sha256 == sha
                )
            )
            if existing is not None:
                if existing.id == doc.current_version_id:
                    return AddResult("unchanged", self.info(s, doc, ns))
                make_current(s, doc, existing)
                return AddResult("restored", self.info(s, doc, ns))
            number = (
                s.scalar(select(func.max(DocumentVersion.number)).where(DocumentVersion.document_id == doc.id)) or 0
            ) + 1
            version = DocumentVersion(
                document_id=doc.id,
                number=number,
                content_sha256=sha,
                byte_count=len(data),
                token_count=sum(c.token_count for c in specs),
                chunk_count=len(specs),
                parser=parser or {"name": "text", "version": "1"},
            )
            s.add(version)
            s.flush()
            s.add_all(
                Chunk(
                    version_id=version.id,
                    ordinal=c.ordinal,
                    text=c.text,
                    start_char=c.start_char,
                    end_char=c.end_char,
                    token_count=c.token_count,
                    meta=dict(c.metadata),
                )
                for c in specs
            )
            make_current(s, doc, version)
            s.flush()
            return AddResult(status, self.info(s, doc, ns))

        try:
            result = rec.retrying(write)
        except BaseException:
            if not blob_existed:
                rec.drop_unreferenced([sha])
            raise
        log.info(
            "add %s/%s: %s (v%s)",
            ns,
            doc_id,
            result.status,
            result.document.version.number if result.document and result.document.version else "?",
        )
        return result

    def rollback(self, document_id: str, version: int, *, namespace: str | None = None) -> DocumentInfo:
        """See :meth:`memory.api.ParametricMemory.rollback`."""
        rec = self.records
        ns = rec.namespace(namespace)

        def write(s: Session) -> DocumentInfo:
            doc = rec.document(s, ns, document_id)
            make_current(s, doc, rec.version(s, doc, version))
            s.flush()
            return self.info(s, doc, ns)

        return rec.retrying(write)

    def delete(self, document_id: str, *, namespace: str | None = None) -> DeleteResult:
        """See :meth:`memory.api.ParametricMemory.delete`."""
        rec = self.records
        ns = rec.namespace(namespace)

        def write(s: Session) -> tuple[DeleteResult, list[str]]:
            doc = rec.document(s, ns, document_id)
            version_ids = list(s.scalars(select(DocumentVersion.id).where(DocumentVersion.document_id == doc.id)))
            shas = list(s.scalars(select(DocumentVersion.content_sha256).where(DocumentVersion.id.in_(version_ids))))
            adapter_shas = [
                b
                for row in s.execute(
                    select(Adapter.blob_sha256, Adapter.synthetic_sha256).where(Adapter.version_id.in_(version_ids))
                )
                for b in row
                if b
            ]
            n_chunks = s.scalar(select(func.count()).where(Chunk.version_id.in_(version_ids))) or 0
            n_adapters = s.scalar(select(func.count()).where(Adapter.version_id.in_(version_ids))) or 0
            doc.current_version_id = None
            s.flush()
            s.delete(doc)
            s.flush()
            return DeleteResult(
                document=document_id,
                namespace=ns,
                versions=len(version_ids),
                chunks=n_chunks,
                adapters=n_adapters,
                blobs_removed=0,
            ), shas + adapter_shas

        result, blobs = rec.retrying(write)
        removed = rec.drop_unreferenced(blobs)
        return DeleteResult(**{**result.__dict__, "blobs_removed": removed})

    def gc(self, *, dry_run: bool = False) -> list[str]:
        """See :meth:`memory.api.ParametricMemory.gc`."""
        return self.records.gc(dry_run=dry_run)

    # ------------------------------------------------------------ read
    def get(
        self, document_id: str, *, namespace: str | None = None, with_text: bool = False, version: int | None = None
    ) -> DocumentInfo:
        """See :meth:`memory.api.ParametricMemory.get`."""
        rec = self.records
        ns = rec.namespace(namespace)
        with rec.tx() as s:
            doc = rec.document(s, ns, document_id)
            info = self.info(s, doc, ns)
            if version is not None:
                v = rec.version(s, doc, version)
                info = DocumentInfo(**{**info.__dict__, "version": version_info(v, doc.current_version_id)})
        if with_text and info.version is not None:
            text = rec.blobs.get(info.version.content_sha256).decode("utf-8")
            info = DocumentInfo(**{**info.__dict__, "text": text})
        return info

    def find(
        self, *, namespace: str | None = None, limit: int = 100, offset: int = 0, prefix: str | None = None
    ) -> list[DocumentInfo]:
        """See :meth:`memory.api.ParametricMemory.list`."""
        ns = self.records.namespace(namespace)
        check_int("limit", limit, low=0)
        check_int("offset", offset, low=0)
        if prefix is not None:
            check_text_field("prefix", prefix)
        with self.records.tx() as s:
            q = (
                select(Document)
                .join(Namespace, Document.namespace_id == Namespace.id)
                .where(Namespace.name == ns)
                .order_by(Document.key)
                .limit(limit)
                .offset(offset)
            )
            if prefix:
                q = q.where(Document.key.startswith(prefix, autoescape=True))
            return self.infos(s, list(s.scalars(q)), ns)

    def chunks(self, document_id: str, *, namespace: str | None = None, version: int | None = None) -> list[ChunkInfo]:
        """See :meth:`memory.api.ParametricMemory.chunks`."""
        rec = self.records
        ns = rec.namespace(namespace)
        with rec.tx() as s:
            v = rec.version(s, rec.document(s, ns, document_id), version)
            return [
                ChunkInfo(
                    id=c.id,
                    ordinal=c.ordinal,
                    text=c.text,
                    token_count=c.token_count,
                    start_char=c.start_char,
                    end_char=c.end_char,
                    metadata=dict(c.meta or {}),
                )
                for c in s.scalars(select(Chunk).where(Chunk.version_id == v.id).order_by(Chunk.ordinal))
            ]

    def current_versions(
        self, *, namespace: str | None = None, stale: bool = False, document_ids: list[str] | None = None
    ) -> list[tuple[str, int]]:
        """``(document id, current version's row id)`` of the namespace's documents (or of ``document_ids``, each
        of which must exist), by id; ``stale``: only those whose current version has no ready adapter."""
        rec = self.records
        ns = rec.namespace(namespace)
        wanted = sorted({validate_document_id(d) for d in document_ids}) if document_ids is not None else None
        with rec.tx() as s:
            q = (
                select(Document.key, Document.current_version_id)
                .join(Namespace, Document.namespace_id == Namespace.id)
                .where(Namespace.name == ns, Document.current_version_id.is_not(None))
                .order_by(Document.key)
            )
            if wanted is not None:
                q = q.where(Document.key.in_(wanted))
            rows = [(key, vid) for key, vid in s.execute(q).tuples() if vid is not None]
            if wanted is not None and len(rows) < len(wanted):
                missing = sorted(set(wanted) - {key for key, _ in rows})
                raise NotFoundError(f"no document {missing[0]!r} in namespace {ns!r}")
            if stale and rows:
                ready = set(
                    s.scalars(
                        select(Adapter.version_id).where(
                            Adapter.version_id.in_([vid for _, vid in rows]), Adapter.status == AdapterStatus.ready
                        )
                    )
                )
                rows = [(key, vid) for key, vid in rows if vid not in ready]
        return rows

    def namespaces(self) -> list[str]:
        with self.records.tx() as s:
            return list(s.scalars(select(Namespace.name).order_by(Namespace.name)))

    def history(self, document_id: str, *, namespace: str | None = None) -> list[VersionInfo]:
        """See :meth:`memory.api.ParametricMemory.history`."""
        rec = self.records
        ns = rec.namespace(namespace)
        with rec.tx() as s:
            doc = rec.document(s, ns, document_id)
            versions = list(
                s.scalars(
                    select(DocumentVersion)
                    .where(DocumentVersion.document_id == doc.id)
                    .order_by(DocumentVersion.number)
                )
            )
            statuses = _adapter_statuses(s, [v.id for v in versions])
            return [version_info(v, doc.current_version_id, statuses.get(v.id)) for v in versions]

    def diff(
        self, document_id: str, old: int, new: int | None = None, *, namespace: str | None = None, context: int = 2
    ) -> str:
        """See :meth:`memory.api.ParametricMemory.diff`."""
        a = self.get(document_id, namespace=namespace, version=old, with_text=True)
        b = self.get(document_id, namespace=namespace, version=new, with_text=True)
        assert a.text is not None and b.text is not None and a.version and b.version
        return "\n".join(
            difflib.unified_diff(
                a.text.splitlines(),
                b.text.splitlines(),
                lineterm="",
                fromfile=f"{document_id}@v{a.version.number}",
                tofile=f"{document_id}@v{b.version.number}",
                n=context,
            )
        )
