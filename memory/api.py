"""``ParametricMemory``: the one facade that the CLI, the workers and the integrations call.

>>> from memory import ParametricMemory
>>> mem = ParametricMemory(home="/tmp/pmem-doc")
>>> mem.add("The vault code is 7342.", document_id="vault").status in {"created", "unchanged"}
True
>>> mem.get("vault").version.number >= 1
True
"""

from __future__ import annotations

import difflib
import logging
import re
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import func, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from memory.config import Settings
from memory.db import (
    Adapter,
    AdapterStatus,
    Chunk,
    Document,
    DocumentVersion,
    Hypernetwork,
    Namespace,
    QueryLog,
    Source,
    get_engine,
    session_factory,
    session_scope,
)
from memory.db.migrate import ensure_schema
from memory.errors import (
    PMemError,
    ConflictError,
    NotFoundError,
    ValidationError,
)
from memory.ingest import chunk_text, content_hash, normalize_text
from memory.storage import BlobStore
from memory.types import (
    AdapterInfo,
    AddResult,
    AddStatus,
    ChunkInfo,
    DeleteResult,
    DocumentInfo,
    QueryResult,
    SearchHit,
    VersionInfo,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_DOC_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@/+=-]{0,254}$")
_RETRIES = 5


def validate_namespace(name: str) -> str:
    """Namespaces are 1-64 characters of ``a-z 0-9 _ -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAMESPACE.match(name):
        raise ValidationError(
            f"invalid namespace {name!r}: use 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return name


def validate_document_id(doc_id: str) -> str:
    """Document ids are 1-255 printable characters ``A-Z a-z 0-9 _ . : @ / + = -`` without ``..`` segments."""
    if (
        not isinstance(doc_id, str)
        or not _DOC_ID.match(doc_id)
        or any(part in ("", ".", "..") for part in doc_id.split("/"))
    ):
        raise ValidationError(
            f"invalid document id {doc_id!r}: use 1-255 characters of letters, digits and _ . : @ / + = -, "
            "no empty, '.' or '..' path segments"
        )
    return doc_id


def _check_text(text: Any, max_bytes: int) -> str:
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
    if "\x00" in sample:
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


class ParametricMemory:
    """Documents stored in model weights, with provenance, versions and classic retrieval beside them.

    Args:
        settings: a ready :class:`~memory.config.Settings`; otherwise built from ``PMEM_*`` variables and
            ``overrides`` (e.g. ``home=``, ``database_url=``, ``namespace=``).

    The embedded database is migrated on first use; a server database must be upgraded with
    ``pmem db upgrade`` first.
    """

    def __init__(self, settings: Settings | None = None, *, embedder: Any = None, **overrides: Any) -> None:
        self.settings = settings.with_(**overrides) if settings else Settings.from_env(**overrides)
        self._embedder_arg = embedder
        self._chunk_index: Any = None
        self._base_model: Any = None
        self._internalizers: dict[str, Any] = {}
        self._adapter_cache: Any = None  # torch is imported only when adapters are used
        url = self.settings.resolved_database_url
        ensure_schema(url, auto_migrate=self.settings.should_auto_migrate)
        self.engine = get_engine(url)
        self._sessions = session_factory(self.engine)
        self.blobs = BlobStore(self.settings.resolved_blob_url)

    def __repr__(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"ParametricMemory(database={url!r}, blobs={self.blobs.url!r})"

    # ------------------------------------------------------------ plumbing
    def _tx(self) -> Any:
        """A transaction on this memory's database (commit on success, roll back on error)."""
        return session_scope(self._sessions)

    def _retrying(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a transaction; on a unique-key race or a stale row, start again from a fresh read."""
        for attempt in range(_RETRIES):
            try:
                with self._tx() as s:
                    return fn(s)
            except (sa_exc.IntegrityError, StaleDataError, sa_exc.OperationalError) as e:
                if isinstance(e, sa_exc.OperationalError) and "lock" not in str(e).lower():
                    raise
                if attempt == _RETRIES - 1:
                    raise ConflictError(f"gave up after {_RETRIES} concurrent-update retries: {e}") from e
                log.debug("retrying after a concurrent update: %s", e)
                time.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    def _ns(self, namespace: str | None) -> str:
        return validate_namespace(namespace if namespace is not None else self.settings.namespace)

    @staticmethod
    def _ns_row(s: Session, name: str, create: bool) -> Namespace | None:
        row = s.scalar(select(Namespace).where(Namespace.name == name))
        if row is None and create:
            row = Namespace(name=name)
            s.add(row)
            s.flush()
        return row

    def _doc(self, s: Session, namespace: str, doc_id: str) -> Document:
        validate_document_id(doc_id)
        doc = s.scalar(
            select(Document)
            .join(Namespace, Document.namespace_id == Namespace.id)
            .where(Namespace.name == namespace, Document.key == doc_id)
        )
        if doc is None:
            raise NotFoundError(f"no document {doc_id!r} in namespace {namespace!r}")
        return doc

    # ------------------------------------------------------------ conversion
    @staticmethod
    def _version_info(v: DocumentVersion, current_id: int | None, adapter_status: str | None = None) -> VersionInfo:
        return VersionInfo(
            number=v.number, content_sha256=v.content_sha256, is_current=v.id == current_id,
            byte_count=v.byte_count, token_count=v.token_count, chunk_count=v.chunk_count,
            parser=dict(v.parser or {}), created_at=v.created_at, adapter_status=adapter_status,
        )

    def _doc_info(self, s: Session, doc: Document, namespace: str, text: str | None = None) -> DocumentInfo:
        cur = s.get(DocumentVersion, doc.current_version_id) if doc.current_version_id else None
        count = s.scalar(select(func.count()).where(DocumentVersion.document_id == doc.id)) or 0
        source = s.get(Source, doc.source_id).uri if doc.source_id else None
        status = None
        if cur is not None:
            status = s.scalar(
                select(Adapter.status).where(Adapter.version_id == cur.id).order_by(Adapter.id.desc()).limit(1)
            )
        return DocumentInfo(
            id=doc.key, namespace=namespace, title=doc.title, metadata=dict(doc.meta or {}),
            version=self._version_info(cur, doc.current_version_id, status.value if status else None) if cur else None,
            version_count=count, source=source, created_at=doc.created_at, updated_at=doc.updated_at, text=text,
        )

    # ------------------------------------------------------------ add
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
        """Store a document's text as a new version (deduplicated by the hash of its normalised text).

        Same content as the current version: nothing changes (``status="unchanged"``). Same content as an
        older version: that version becomes current again (``"restored"``). Otherwise a new version with
        its chunks is written (``"created"`` / ``"new_version"``).

        >>> mem.add("Policy v1", document_id="policy").status  # doctest: +SKIP
        'created'
        """
        ns = self._ns(namespace)
        normalised = _check_text(text, self.settings.max_document_bytes)
        sha = content_hash(normalised)
        doc_id = validate_document_id(document_id) if document_id is not None else f"doc-{sha[:16]}"
        if metadata is not None and not isinstance(metadata, dict):
            raise ValidationError(f"metadata must be a dict, got {type(metadata).__name__}")
        specs = chunks if chunks is not None else chunk_text(normalised, self.settings.chunk_tokens)
        data = normalised.encode("utf-8")
        # The blob is written before the rows that reference it; if the transaction fails, it is removed.
        blob_existed = self.blobs.exists(sha)
        self.blobs.put(data)

        def write(s: Session) -> AddResult:
            ns_row = self._ns_row(s, ns, create=True)
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
                select(DocumentVersion).where(DocumentVersion.document_id == doc.id,
                                              DocumentVersion.content_sha256 == sha)
            )
            if existing is not None:
                if existing.id == doc.current_version_id:
                    return AddResult("unchanged", self._doc_info(s, doc, ns))
                self._make_current(s, doc, existing)
                return AddResult("restored", self._doc_info(s, doc, ns))
            number = (s.scalar(select(func.max(DocumentVersion.number)).where(
                DocumentVersion.document_id == doc.id)) or 0) + 1
            version = DocumentVersion(
                document_id=doc.id, number=number, content_sha256=sha, byte_count=len(data),
                token_count=sum(c.token_count for c in specs), chunk_count=len(specs),
                parser=parser or {"name": "text", "version": "1"},
            )
            s.add(version)
            s.flush()
            s.add_all(
                Chunk(version_id=version.id, ordinal=c.ordinal, text=c.text, start_char=c.start_char,
                      end_char=c.end_char, token_count=c.token_count, meta=dict(c.metadata))
                for c in specs
            )
            self._make_current(s, doc, version)
            s.flush()
            return AddResult(status, self._doc_info(s, doc, ns))

        try:
            result = self._retrying(write)
        except BaseException:
            if not blob_existed:
                self._drop_unreferenced([sha])
            raise
        log.info("add %s/%s: %s (v%s)", ns, doc_id, result.status,
                 result.document.version.number if result.document.version else "?")
        return result

    def _make_current(self, s: Session, doc: Document, version: DocumentVersion) -> None:
        """Point the document at ``version``; its adapters become ready again, the old ones superseded."""
        old = doc.current_version_id
        doc.current_version_id = version.id
        if old is not None and old != version.id:
            for a in s.scalars(select(Adapter).where(Adapter.version_id == old,
                                                     Adapter.status == AdapterStatus.ready)):
                a.status = AdapterStatus.superseded
        for a in s.scalars(select(Adapter).where(Adapter.version_id == version.id,
                                                 Adapter.status == AdapterStatus.superseded)):
            a.status = AdapterStatus.ready

    # ------------------------------------------------------------ read
    def get(self, document_id: str, *, namespace: str | None = None, with_text: bool = False,
            version: int | None = None) -> DocumentInfo:
        """Return a document (its current version, or ``version``), optionally with its verified text."""
        ns = self._ns(namespace)
        with self._tx() as s:
            doc = self._doc(s, ns, document_id)
            info = self._doc_info(s, doc, ns)
            if version is not None:
                v = self._version(s, doc, version)
                info = DocumentInfo(**{**info.__dict__, "version": self._version_info(v, doc.current_version_id)})
        if with_text and info.version is not None:
            text = self.blobs.get(info.version.content_sha256).decode("utf-8")
            info = DocumentInfo(**{**info.__dict__, "text": text})
        return info

    def list(self, *, namespace: str | None = None, limit: int = 100, offset: int = 0,
             prefix: str | None = None) -> list[DocumentInfo]:
        """List documents in a namespace, ordered by id."""
        ns = self._ns(namespace)
        if limit < 0 or offset < 0:
            raise ValidationError("limit and offset must be >= 0")
        with self._tx() as s:
            q = (select(Document).join(Namespace, Document.namespace_id == Namespace.id)
                 .where(Namespace.name == ns).order_by(Document.key).limit(limit).offset(offset))
            if prefix:
                q = q.where(Document.key.startswith(prefix, autoescape=True))
            return [self._doc_info(s, d, ns) for d in s.scalars(q)]

    def chunks(self, document_id: str, *, namespace: str | None = None,
               version: int | None = None) -> list[ChunkInfo]:
        """The chunks of the current version (or ``version``) of a document."""
        ns = self._ns(namespace)
        with self._tx() as s:
            doc = self._doc(s, ns, document_id)
            v = self._version(s, doc, version)
            return [ChunkInfo(id=c.id, ordinal=c.ordinal, text=c.text, token_count=c.token_count,
                              start_char=c.start_char, end_char=c.end_char, metadata=dict(c.meta or {}))
                    for c in s.scalars(select(Chunk).where(Chunk.version_id == v.id).order_by(Chunk.ordinal))]

    def namespaces(self) -> list[str]:
        with self._tx() as s:
            return list(s.scalars(select(Namespace.name).order_by(Namespace.name)))

    @staticmethod
    def _version(s: Session, doc: Document, number: int | None) -> DocumentVersion:
        if number is None:
            if doc.current_version_id is None:
                raise NotFoundError(f"document {doc.key!r} has no current version")
            v = s.get(DocumentVersion, doc.current_version_id)
        else:
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValidationError(f"version must be a positive integer, got {number!r}")
            v = s.scalar(select(DocumentVersion).where(DocumentVersion.document_id == doc.id,
                                                       DocumentVersion.number == number))
        if v is None:
            raise NotFoundError(f"document {doc.key!r} has no version {number}")
        return v

    # ------------------------------------------------------------ versions
    def history(self, document_id: str, *, namespace: str | None = None) -> list[VersionInfo]:
        """Every version of a document, oldest first, with the current one marked."""
        ns = self._ns(namespace)
        with self._tx() as s:
            doc = self._doc(s, ns, document_id)
            out = []
            for v in s.scalars(select(DocumentVersion).where(DocumentVersion.document_id == doc.id)
                               .order_by(DocumentVersion.number)):
                status = s.scalar(select(Adapter.status).where(Adapter.version_id == v.id)
                                  .order_by(Adapter.id.desc()).limit(1))
                out.append(self._version_info(v, doc.current_version_id, status.value if status else None))
            return out

    def diff(self, document_id: str, old: int, new: int | None = None, *, namespace: str | None = None,
             context: int = 2) -> str:
        """A unified diff between two versions' texts (``new`` defaults to the current version)."""
        a = self.get(document_id, namespace=namespace, version=old, with_text=True)
        b = self.get(document_id, namespace=namespace, version=new, with_text=True)
        assert a.text is not None and b.text is not None and a.version and b.version
        return "\n".join(difflib.unified_diff(
            a.text.splitlines(), b.text.splitlines(), lineterm="",
            fromfile=f"{document_id}@v{a.version.number}", tofile=f"{document_id}@v{b.version.number}", n=context,
        ))

    def rollback(self, document_id: str, version: int, *, namespace: str | None = None) -> DocumentInfo:
        """Make an older (or any) version current again; its adapter, if any, becomes the ready one."""
        ns = self._ns(namespace)

        def write(s: Session) -> DocumentInfo:
            doc = self._doc(s, ns, document_id)
            v = self._version(s, doc, version)
            self._make_current(s, doc, v)
            s.flush()
            return self._doc_info(s, doc, ns)

        return self._retrying(write)

    # ------------------------------------------------------------ delete
    def delete(self, document_id: str, *, namespace: str | None = None) -> DeleteResult:
        """Remove a document with all its versions, chunks, adapters and (now unreferenced) blobs."""
        ns = self._ns(namespace)

        def write(s: Session) -> tuple[DeleteResult, list[str]]:
            doc = self._doc(s, ns, document_id)
            version_ids = list(s.scalars(select(DocumentVersion.id).where(DocumentVersion.document_id == doc.id)))
            shas = list(s.scalars(select(DocumentVersion.content_sha256)
                                  .where(DocumentVersion.id.in_(version_ids))))
            adapter_shas = [b for b in s.scalars(select(Adapter.blob_sha256)
                                                  .where(Adapter.version_id.in_(version_ids))) if b]
            n_chunks = s.scalar(select(func.count()).where(Chunk.version_id.in_(version_ids))) or 0
            n_adapters = s.scalar(select(func.count()).where(Adapter.version_id.in_(version_ids))) or 0
            doc.current_version_id = None
            s.flush()
            s.delete(doc)
            s.flush()
            return DeleteResult(document=document_id, namespace=ns, versions=len(version_ids), chunks=n_chunks,
                                adapters=n_adapters, blobs_removed=0), shas + adapter_shas

        result, blobs = self._retrying(write)
        removed = self._drop_unreferenced(blobs)
        return DeleteResult(**{**result.__dict__, "blobs_removed": removed})

    def _referenced(self, s: Session, shas: list[str]) -> set[str]:
        if not shas:
            return set()
        used = set(s.scalars(select(DocumentVersion.content_sha256).where(DocumentVersion.content_sha256.in_(shas))))
        used |= set(s.scalars(select(Adapter.blob_sha256).where(Adapter.blob_sha256.in_(shas))))
        return used

    def _drop_unreferenced(self, shas: list[str]) -> int:
        """Delete those of ``shas`` that no row references any more (content is shared across documents)."""
        with self._tx() as s:
            used = self._referenced(s, shas)
        return sum(self.blobs.delete(sha) for sha in set(shas) - used)

    def gc(self, *, dry_run: bool = False) -> list[str]:
        """Remove every blob that no row references (left by a crash between blob write and commit)."""
        with self._tx() as s:
            referenced = set(s.scalars(select(DocumentVersion.content_sha256)))
            referenced |= {b for b in s.scalars(select(Adapter.blob_sha256)) if b}
        return self.blobs.sweep(referenced, dry_run=dry_run)

    # ------------------------------------------------------------ feedback
    def feedback(self, query_id: int, score: float, *, namespace: str | None = None) -> None:
        """Attach a user score to a logged query (for A/B reports)."""
        ns = self._ns(namespace)
        if not isinstance(score, (int, float)) or score != score:
            raise ValidationError(f"score must be a number, got {score!r}")
        with self._tx() as s:
            row = s.scalar(select(QueryLog).join(Namespace, QueryLog.namespace_id == Namespace.id)
                           .where(QueryLog.id == query_id, Namespace.name == ns))
            if row is None:
                raise NotFoundError(f"no query {query_id} in namespace {ns!r}")
            row.feedback = float(score)

    # ------------------------------------------------------------ filled by later components
    def add_source(self, spec: str, *, namespace: str | None = None, document_id: str | None = None,
                   title: str | None = None, refresh_interval_s: int | None = None,
                   prune_missing: bool = False) -> list[AddResult]:
        """Parse a file, a directory or a glob with Unstructured and add each file as a document.

        Each file becomes the document ``document_key(path, root)`` (or ``document_id`` for a single file);
        the source (uri, kind, refresh interval, parser versions) is recorded. A bad file fails alone:
        its error is recorded on the source and returned as an ``AddResult`` with ``status="failed"``.
        With ``prune_missing`` (what the scheduled refresh uses), documents that came from this directory or
        glob but whose file is no longer there are deleted (``status="removed"``); a file that is still
        there but fails to parse keeps its document, and a source that now holds no files at all removes
        nothing (it is recorded as the source's error).

        >>> [r.status for r in mem.add_source("policies/")]  # doctest: +SKIP
        ['created', 'created', 'failed']
        """
        from memory.ingest import chunk_document, document_key, partition_path, scan_source

        ns = self._ns(namespace)
        if refresh_interval_s is not None and (not isinstance(refresh_interval_s, int) or refresh_interval_s < 1):
            raise ValidationError(f"refresh_interval_s must be a positive integer, got {refresh_interval_s!r}")
        scan = scan_source(spec)
        if document_id is not None and len(scan.files) != 1:
            raise ValidationError(f"document_id names one document but {spec!r} holds {len(scan.files)} files")
        uri = str(scan.root / Path(spec).name) if scan.kind == "file" else str(spec)
        results: list[AddResult] = []
        errors: list[str] = []
        for path in scan.files:
            shown = str(path)
            try:
                parsed = partition_path(path, max_bytes=self.settings.max_document_bytes)
                normalised = normalize_text(parsed.text)
                if normalised == parsed.text:
                    chunks = chunk_document(parsed, self.settings.chunk_tokens)
                else:  # offsets would not match the stored text: chunk the normalised text instead
                    chunks = chunk_text(normalised, self.settings.chunk_tokens)
                key = document_id or document_key(path, scan.root)
                results.append(self.add(
                    normalised, document_id=key, namespace=ns, title=title, parser=parsed.parser,
                    source=uri, chunks=chunks,
                    metadata={"source_path": shown, "filetype": parsed.filetype},
                ))
            except PMemError as e:
                log.warning("ingest of %s failed: %s", shown, e)
                errors.append(str(e))  # ingest errors already name the file
                results.append(AddResult("failed", None, source=shown, error=str(e)))
        if prune_missing and scan.kind != "file" and not scan.files:
            # An empty (or not yet mounted) directory is far likelier an accident than a deliberate wipe.
            errors.append(f"{uri} holds no files now: nothing was removed (delete documents with `pmem rm`)")
            log.warning(errors[-1])
        elif prune_missing and scan.kind != "file":
            present = {document_key(path, scan.root) for path in scan.files}
            with self._tx() as s:
                gone = list(s.scalars(
                    select(Document.key).join(Source, Document.source_id == Source.id)
                    .join(Namespace, Document.namespace_id == Namespace.id)
                    .where(Namespace.name == ns, Source.uri == uri).order_by(Document.key)))
            for key in (k for k in gone if k not in present):
                self.delete(key, namespace=ns)
                log.info("%s is gone from %s: document deleted", key, uri)
                results.append(AddResult("removed", None, source=key))
        self._record_source(ns, uri, scan.kind, refresh_interval_s, errors,
                            next((r.document for r in results if r.document), None))
        return results

    def _record_source(self, ns: str, uri: str, kind: str, refresh_interval_s: int | None, errors: list[str],
                       any_doc: DocumentInfo | None) -> None:
        from memory.db.models import utcnow
        from memory.ingest.offline import spacy_info, unstructured_version

        def write(s: Session) -> None:
            ns_row = self._ns_row(s, ns, create=True)
            assert ns_row is not None
            src = s.scalar(select(Source).where(Source.namespace_id == ns_row.id, Source.uri == uri))
            if src is None:
                src = Source(namespace_id=ns_row.id, uri=uri, kind=kind)
                s.add(src)
            src.kind = kind
            if refresh_interval_s is not None:
                src.refresh_interval_s = refresh_interval_s
            src.last_checked_at = utcnow()
            src.last_error = "\n".join(errors)[:20000] or None
            src.parser = {"library": "unstructured", "version": unstructured_version(), "strategy": "fast",
                          "spacy": spacy_info()}

        self._retrying(write)

    def sources(self, *, namespace: str | None = None) -> list[dict[str, Any]]:
        """Registered sources with their refresh interval, last check and last error."""
        ns = self._ns(namespace)
        with self._tx() as s:
            rows = s.scalars(select(Source).join(Namespace, Source.namespace_id == Namespace.id)
                             .where(Namespace.name == ns).order_by(Source.uri))
            return [{"uri": r.uri, "kind": r.kind, "refresh_interval_s": r.refresh_interval_s,
                     "last_checked_at": r.last_checked_at, "last_error": r.last_error, "parser": r.parser}
                    for r in rows]

    # ------------------------------------------------------------ models and internalization
    @property
    def base_model(self) -> Any:
        """The base model (loaded once per process on first use; converted from GGUF once per PMEM_HOME)."""
        if self._base_model is None:
            from memory.models import load_base_model

            self._base_model = load_base_model(self.settings.base_model, settings=self.settings)
        return self._base_model

    def internalizer(self, method: str = "auto") -> Any:
        """The internalizer for ``method`` (``auto``: Doc-to-LoRA when a checkpoint fits the base model, else CD)."""
        from memory import internalizers

        return internalizers.resolve(method, self.base_model, cache=self._internalizers)

    def configure_internalizer(self, method: str, **options: Any) -> Any:
        """Set options of an internalizer for later calls, e.g. ``configure_internalizer("cd", steps=24)``
        (context distillation's options are those of :func:`memory.distill.distill_document`)."""
        from memory import internalizers

        if method == "cd":
            self._internalizers["cd"] = internalizers.CDInternalizer(self.base_model, **options)
        elif method == "d2l":
            path = options.pop("checkpoint", None)
            if options:
                raise ValidationError(f"d2l takes only a checkpoint option, got {sorted(options)}")
            self._internalizers.pop("d2l-default", None)
            self._internalizers["d2l-default"] = internalizers.resolve("d2l", self.base_model, checkpoint=path,
                                                                       cache={})
        else:
            raise ValidationError(f"method must be 'cd' or 'd2l', got {method!r}")
        return self.internalizer(method)

    def internalize(self, document_id: str, *, namespace: str | None = None, version: int | None = None,
                    method: str = "auto", force: bool = False) -> AdapterInfo:
        """Turn a version (default: current) into a ready LoRA adapter, in-process; idempotent.

        ``method``: ``d2l`` (Doc-to-LoRA hypernetwork), ``cd`` (context distillation) or ``auto`` (D2L when a
        checkpoint for the base model exists, else CD).

        >>> mem.internalize("vault").status  # doctest: +SKIP
        'ready'
        """
        ns = self._ns(namespace)
        with self._tx() as s:
            v = self._version(s, self._doc(s, ns, document_id), version)
            version_id = v.id
        return self.internalize_version(version_id, method=method, force=force)

    def internalize_version(self, version_id: int, *, method: str = "auto", force: bool = False,
                            progress: Any = None) -> AdapterInfo:
        """Worker entry point: internalize a version by its database id (idempotent by version and hypernetwork).

        Two callers racing on the same version end with one adapter: the blob is content-addressed and the row
        is unique per (version, hypernetwork); the loser adopts the winner's row.
        """
        from memory.lora import to_bytes

        internalizer = self.internalizer(method)
        ident = internalizer.identity
        with self._tx() as s:
            v = s.get(DocumentVersion, version_id)
            if v is None:
                raise NotFoundError(f"no document version with id {version_id}")
            hyper_id = self._hypernetwork_row(s, ident, self.base_model.fingerprint)
            existing = s.scalar(select(Adapter).where(Adapter.version_id == version_id,
                                                      Adapter.hypernetwork_id == hyper_id))
            if existing is not None and existing.status in (AdapterStatus.ready, AdapterStatus.superseded) \
                    and not force:
                return self._adapter_info(s, existing)
            content_sha, chunk_count = v.content_sha256, v.chunk_count
            namespace_id = v.document.namespace_id
        text = self.blobs.get(content_sha).decode("utf-8")  # hash-verified
        t0 = time.perf_counter()
        try:
            adapter = internalizer.internalize(self.base_model, text, progress=progress)
            blob = to_bytes(adapter)
        except PMemError as e:
            self._record_failure(version_id, hyper_id, namespace_id, str(e))
            raise
        except Exception as e:  # a bug or a resource fault: record it on the row, then re-raise
            self._record_failure(version_id, hyper_id, namespace_id, f"{type(e).__name__}: {e}")
            raise
        latency_ms = (time.perf_counter() - t0) * 1000

        def write(s: Session, sha: str) -> AdapterInfo:
            v = s.get(DocumentVersion, version_id)
            if v is None:
                raise NotFoundError(f"document version {version_id} was deleted while it was internalized")
            row = s.scalar(select(Adapter).where(Adapter.version_id == version_id,
                                                 Adapter.hypernetwork_id == hyper_id))
            if row is not None and row.status in (AdapterStatus.ready, AdapterStatus.superseded) and not force:
                return self._adapter_info(s, row)  # another worker won the race
            current = v.document.current_version_id == version_id
            new = row is None
            if row is None:  # filled completely before it is added: an autoflush must never see it half-set
                row = Adapter(namespace_id=namespace_id, version_id=version_id, hypernetwork_id=hyper_id)
            row.base_model = adapter.base_model
            row.target_modules = adapter.target_modules
            row.rank = adapter.rank
            row.chunk_count = chunk_count
            row.blob_sha256 = sha
            row.size_bytes = len(blob)
            row.latency_ms = latency_ms
            row.status = AdapterStatus.ready if current else AdapterStatus.superseded
            row.error = None
            row.meta = {"method": ident.kind, "hypernetwork": ident.name}
            if new:
                s.add(row)
            s.flush()
            return self._adapter_info(s, row)

        info = self._store_adapter(blob, write)
        log.info("internalized version %s with %s in %.0f ms (rank %s, %s bytes)", version_id, ident.kind,
                 latency_ms, info.rank, info.size_bytes)
        return info

    def _store_adapter(self, blob: bytes, write: Callable[[Session, str], AdapterInfo]) -> AdapterInfo:
        """Write an adapter blob, then its row (``write(session, sha)``); never leave an orphan blob.

        When a concurrent caller committed first, ``write`` returns that row and our copy is dropped
        (content-addressed: usually the very same bytes).
        """
        from memory.storage import sha256_hex

        sha = sha256_hex(blob)
        existed = self.blobs.exists(sha)
        self.blobs.put(blob)
        try:
            info = self._retrying(lambda s: write(s, sha))
        except BaseException:
            if not existed:
                self._drop_unreferenced([sha])
            raise
        if info.blob_sha256 != sha and not existed:
            self._drop_unreferenced([sha])
        return info

    def _record_failure(self, version_id: int, hyper_id: int, namespace_id: int, error: str) -> None:
        def write(s: Session) -> None:
            row = s.scalar(select(Adapter).where(Adapter.version_id == version_id,
                                                 Adapter.hypernetwork_id == hyper_id))
            if row is None:
                row = Adapter(namespace_id=namespace_id, version_id=version_id, hypernetwork_id=hyper_id,
                              base_model=self.base_model.fingerprint, rank=0, target_modules=[])
                s.add(row)
            if row.status != AdapterStatus.ready:
                row.status = AdapterStatus.failed
                row.error = error[:10000]

        self._retrying(write)

    @staticmethod
    def _hypernetwork_row(s: Session, ident: Any, base_fingerprint: str) -> int:
        row = s.scalar(select(Hypernetwork).where(Hypernetwork.checkpoint_sha256 == ident.checkpoint_sha256))
        if row is None:
            try:
                with s.begin_nested():
                    row = Hypernetwork(kind=ident.kind, name=ident.name, base_model=base_fingerprint,
                                       checkpoint_sha256=ident.checkpoint_sha256, config=ident.config,
                                       eval_metrics=ident.eval_metrics)
                    s.add(row)
                    s.flush()
            except sa_exc.IntegrityError:  # registered concurrently
                row = s.scalar(select(Hypernetwork).where(
                    Hypernetwork.checkpoint_sha256 == ident.checkpoint_sha256))
        assert row is not None
        return row.id

    @staticmethod
    def _adapter_info(s: Session, a: Adapter, v: DocumentVersion | None = None, doc: Document | None = None,
                      ns: Namespace | None = None, h: Hypernetwork | None = None) -> AdapterInfo:
        """An adapter with its provenance; rows already loaded by a joined query are passed in, others fetched."""
        v = v or (s.get(DocumentVersion, a.version_id) if a.version_id else None)
        doc = doc or (s.get(Document, v.document_id) if v else None)
        ns = ns or s.get(Namespace, a.namespace_id)
        h = h or s.get(Hypernetwork, a.hypernetwork_id)
        return AdapterInfo(
            id=a.id, namespace=ns.name if ns else "?", document_id=doc.key if doc else None,
            version=v.number if v else None, task_description=a.task_description, method=h.kind if h else "?",
            hypernetwork=f"{h.name}@{h.checkpoint_sha256[:12]}" if h else "?", base_model=a.base_model,
            target_modules=list(a.target_modules or []), rank=a.rank, chunk_count=a.chunk_count,
            blob_sha256=a.blob_sha256, size_bytes=a.size_bytes, latency_ms=a.latency_ms, status=a.status.value,
            error=a.error, created_at=a.created_at,
        )

    def adapters(self, *, namespace: str | None = None, document_id: str | None = None,
                 status: str | None = None) -> list[AdapterInfo]:
        """List adapters with their provenance, newest first."""
        ns = self._ns(namespace)
        if status is not None and status not in {m.value for m in AdapterStatus}:
            raise ValidationError(f"status must be one of {[m.value for m in AdapterStatus]}, got {status!r}")
        with self._tx() as s:
            # One joined query for the adapters and their provenance (skill adapters have no version/document).
            q = (select(Adapter, DocumentVersion, Document, Namespace, Hypernetwork)
                 .join(Namespace, Adapter.namespace_id == Namespace.id)
                 .join(Hypernetwork, Adapter.hypernetwork_id == Hypernetwork.id)
                 .outerjoin(DocumentVersion, Adapter.version_id == DocumentVersion.id)
                 .outerjoin(Document, DocumentVersion.document_id == Document.id)
                 .where(Namespace.name == ns).order_by(Adapter.id.desc()))
            if document_id is not None:
                doc = self._doc(s, ns, document_id)
                q = q.where(DocumentVersion.document_id == doc.id)
            if status is not None:
                q = q.where(Adapter.status == AdapterStatus(status))
            return [self._adapter_info(s, a, v, d, n, h) for a, v, d, n, h in s.execute(q)]

    def load_adapter(self, info: AdapterInfo) -> Any:
        """Decode a stored adapter (hash-verified, LRU-cached)."""
        if not info.blob_sha256:
            raise NotFoundError(f"adapter {info.id} has no blob (status {info.status})")
        if self._adapter_cache is None:
            from memory.lora import AdapterCache

            self._adapter_cache = AdapterCache(self.settings.adapter_cache_size)
        return self._adapter_cache.get_or_load(info.blob_sha256, lambda: self.blobs.get(info.blob_sha256))

    # ------------------------------------------------------------ query
    def query(self, question: str, *, namespace: str | None = None, mode: str = "auto", k: int = 4,
              document_ids: list[str] | None = None, max_new_tokens: int = 64, log: bool = True,
              experiment: str | None = None, arm: str | None = None, skill: int | None = None) -> QueryResult:
        """Answer a question from memory: ``parametric`` (adapters), ``retrieval``, ``hybrid`` or ``auto``.

        Only the adapters of the documents relevant to the question are applied (or of ``document_ids``).
        ``skill`` (a skill adapter id from :meth:`specialize`) is applied in the same forward pass: knowledge
        adapters and a skill adapter compose by rank concatenation. The result carries the mode and the reason.

        >>> r = mem.query("What is the vault code?")  # doctest: +SKIP
        >>> r.answer, r.mode  # doctest: +SKIP
        ('7342', 'parametric')
        """
        from memory import router

        ns = self._ns(namespace)
        router.check_mode(mode)
        if not isinstance(question, str) or not question.strip():
            raise ValidationError("question must be a non-empty string")
        cfg = router.RouterConfig()
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        named = set(validate_document_id(d) for d in document_ids) if document_ids is not None else None
        scope = {"document_id": {"$in": sorted(named)}} if named else None
        hits = self.search(question, k=max(k, 8), namespace=ns, filter=scope) if named != set() else []
        timings["search_ms"] = (time.perf_counter() - t0) * 1000
        ready = self._current_adapters(ns, {h.document_id for h in hits} | (named or set()))
        best: dict[str, float] = {}
        for h in hits:
            best[h.document_id] = max(best.get(h.document_id, -1.0), h.score)
        for d in named or ():  # documents named by the caller count as relevant whatever their similarity
            best[d] = 1.0
        candidates = [router.Candidate(d, score, d in ready and ready[d].status == "ready",
                                       ready[d].status if d in ready else None) for d, score in best.items()]
        route = router.decide(question, mode, candidates, cfg)
        adapter_infos = [ready[d] for d in route.adapter_documents]
        if skill is not None:
            adapter_infos.append(self.skill(skill, namespace=ns))
        context = hits[:k] if route.mode in ("retrieval", "hybrid") else []
        t1 = time.perf_counter()
        lora = self._compose(adapter_infos)
        timings["adapter_load_ms"] = (time.perf_counter() - t1) * 1000
        base = self.base_model
        mode_used, reason = route.mode, route.reason
        gen, prompt_ids = self._answer(base, question, context, lora, max_new_tokens)
        if route.check_confidence and route.adapter_documents:
            confidence = self._mean_logprob(base, prompt_ids, gen.token_ids, lora)
            chosen = set(route.adapter_documents)
            evidence = [h.text for h in hits if h.document_id in chosen]
            supported = router.support(gen.text, evidence, question)
            missing = router.unsupported_key_words(gen.text, evidence, question)
            timings["confidence"], timings["support"] = confidence, supported
            doubt = None
            loop = router.degenerate(gen.text)
            if loop:
                doubt = f"the adapted answer is degenerate ({loop})"
            elif confidence < cfg.min_confidence:
                doubt = f"the adapted model was unsure (mean log-prob {confidence:.2f} < {cfg.min_confidence})"
            elif missing:
                doubt = ("the adapted answer is not supported by the retrieved passages (they lack "
                         f"{', '.join(repr(w) for w in missing[:3])})")
            elif supported < cfg.min_support:
                doubt = (f"the adapted answer is not supported by the retrieved passages ({supported:.0%} of its "
                         f"content words found < {cfg.min_support:.0%})")
            if doubt:
                context = hits[:k]
                skill_only = self._compose(adapter_infos[len(route.adapter_documents):])  # keep a skill adapter
                gen, prompt_ids = self._answer(base, question, context, skill_only, max_new_tokens)
                mode_used = "retrieval"
                reason += f"; {doubt}, so it answered from the retrieved passages instead"
        timings["generate_ms"] = gen.total_s * 1000
        timings["total_ms"] = (time.perf_counter() - t0) * 1000
        query_id = None
        if log:
            query_id = self._log_query(ns, question, mode_used, reason, experiment, arm, adapter_infos, context,
                                       timings["total_ms"], gen.text)
        return QueryResult(answer=gen.text.strip(), mode=mode_used, reason=reason, adapters=adapter_infos,
                           chunks=context, timings_ms=timings, query_id=query_id,
                           prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens)

    def _current_adapters(self, ns: str, document_ids: set[str]) -> dict[str, AdapterInfo]:
        """For each document, the adapter of its current version (a ready one when there is one)."""
        if not document_ids:
            return {}
        out: dict[str, AdapterInfo] = {}
        with self._tx() as s:
            rows = s.execute(
                select(Adapter, DocumentVersion, Document, Namespace, Hypernetwork)
                .join(Document, Document.current_version_id == Adapter.version_id)
                .join(DocumentVersion, DocumentVersion.id == Adapter.version_id)
                .join(Namespace, Document.namespace_id == Namespace.id)
                .join(Hypernetwork, Adapter.hypernetwork_id == Hypernetwork.id)
                .where(Namespace.name == ns, Document.key.in_(sorted(document_ids)))
                .order_by(Adapter.id)
            ).all()
            for a, v, doc, n, h in rows:
                if doc.key not in out or a.status == AdapterStatus.ready:
                    out[doc.key] = self._adapter_info(s, a, v, doc, n, h)
        return out

    def _compose(self, infos: list[AdapterInfo]) -> Any:
        """The adapters of several documents applied together (rank concatenation: the deltas add up)."""
        if not infos:
            return None
        from memory.lora import concat

        loras = [self.load_adapter(i) for i in infos]
        return loras[0] if len(loras) == 1 else concat(loras)

    @staticmethod
    def _answer(base: Any, question: str, context: list[SearchHit], lora: Any,
                max_new_tokens: int) -> tuple[Any, list[int]]:
        from memory import prompts

        user = (prompts.context_prompt(question, [h.text for h in context]) if context
                else prompts.parametric_prompt(question))
        prompt_ids = base.chat_ids(user, system=prompts.QA_SYSTEM)
        gen = base.generate([prompt_ids], max_new_tokens=max_new_tokens, adapters=lora)[0]
        return gen, prompt_ids

    @staticmethod
    def _mean_logprob(base: Any, prompt_ids: list[int], answer_ids: list[int], lora: Any) -> float:
        """Mean log-probability per answer token under the adapted model (the router's confidence signal)."""
        import torch

        if not answer_ids:
            return float("-inf")
        ids = torch.tensor([list(prompt_ids) + list(answer_ids)], device=base.device)
        with torch.no_grad():
            logits = base.forward(ids, adapters=lora).logits[0, len(prompt_ids) - 1 : -1].float()
        target = torch.tensor(answer_ids, device=logits.device)[:, None]
        return float(torch.log_softmax(logits, -1).gather(-1, target).mean())

    def _log_query(self, ns: str, question: str, mode: str, reason: str, experiment: str | None,
                   arm: str | None, adapters: list[AdapterInfo], chunks: list[SearchHit], latency_ms: float,
                   answer: str) -> int:
        def write(s: Session) -> int:
            ns_row = self._ns_row(s, ns, create=True)
            assert ns_row is not None
            row = QueryLog(namespace_id=ns_row.id, query=question, mode=mode, reason=reason, experiment=experiment,
                           arm=arm, adapter_ids=[a.id for a in adapters], chunk_ids=[c.chunk_id for c in chunks],
                           latency_ms=latency_ms, answer=answer)
            s.add(row)
            s.flush()
            return row.id

        return self._retrying(write)

    @property
    def embedder(self) -> Any:
        """The embedding model of classic retrieval (``memory.retrieval.Embedder``)."""
        return self.chunk_index.embedder

    @embedder.setter
    def embedder(self, value: Any) -> None:
        self._embedder_arg = value
        self._chunk_index = None  # rebuilt (and chunks re-embedded) with the new model on next use

    @property
    def chunk_index(self) -> Any:
        """The classic-retrieval index over current chunks (embedding model loaded on first use)."""
        if self._chunk_index is None:
            from memory.chunk_index import ChunkIndex
            from memory.retrieval import as_embedder

            self._chunk_index = ChunkIndex(self._sessions, as_embedder(self._embedder_arg))
        return self._chunk_index

    def search(self, query: str, *, k: int = 4, namespace: str | None = None,
               filter: dict[str, Any] | None = None) -> list[SearchHit]:
        """Classic vector search over the chunks of current versions (metadata filters on document metadata).

        >>> [h.document_id for h in mem.search("vault code", k=1)]  # doctest: +SKIP
        ['vault']
        """
        ns = self._ns(namespace)
        if not isinstance(query, str) or not query.strip():
            raise ValidationError("query must be a non-empty string")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValidationError(f"k must be a positive integer, got {k!r}")
        return self.chunk_index.search(query, k=k, ns=ns, filter=filter)

    def specialize(self, description: str, *, namespace: str | None = None,
                   checkpoint: str | None = None) -> AdapterInfo:
        """Turn a plain-language task description into a stored skill adapter (Text-to-LoRA, one forward pass).

        The same description in the same namespace gives the same adapter row (idempotent).

        >>> skill = mem.specialize("Answer with the number only.")  # doctest: +SKIP
        >>> mem.query("What is the vault code?", skill=skill.id).answer  # doctest: +SKIP
        """
        from memory import internalizers
        from memory.lora import to_bytes
        from memory.storage import sha256_hex

        ns = self._ns(namespace)
        if not isinstance(description, str) or not description.strip():
            raise ValidationError("a skill description must be a non-empty string")
        key = f"t2l:{checkpoint or internalizers.DEFAULT_T2L}"
        if key not in self._internalizers:
            self._internalizers[key] = internalizers.T2LGenerator(checkpoint, self.base_model)
        generator = self._internalizers[key]
        task_sha = sha256_hex(normalize_text(description).encode("utf-8"))
        with self._tx() as s:
            ns_row = self._ns_row(s, ns, create=True)
            assert ns_row is not None
            hyper_id = self._hypernetwork_row(s, generator.identity, self.base_model.fingerprint)
            row = s.scalar(select(Adapter).where(Adapter.namespace_id == ns_row.id, Adapter.task_sha256 == task_sha,
                                                 Adapter.hypernetwork_id == hyper_id))
            if row is not None and row.status == AdapterStatus.ready:
                return self._adapter_info(s, row)
            namespace_id = ns_row.id
        t0 = time.perf_counter()
        adapter = generator.generate(description)
        latency_ms = (time.perf_counter() - t0) * 1000
        blob = to_bytes(adapter)

        def write(s: Session, sha: str) -> AdapterInfo:
            row = s.scalar(select(Adapter).where(Adapter.namespace_id == namespace_id,
                                                 Adapter.task_sha256 == task_sha, Adapter.hypernetwork_id == hyper_id))
            if row is not None and row.status == AdapterStatus.ready:
                return self._adapter_info(s, row)
            new = row is None
            if row is None:
                row = Adapter(namespace_id=namespace_id, version_id=None, hypernetwork_id=hyper_id)
            row.task_description, row.task_sha256 = description, task_sha
            row.base_model, row.target_modules, row.rank = adapter.base_model, adapter.target_modules, adapter.rank
            row.chunk_count, row.blob_sha256, row.size_bytes = 0, sha, len(blob)
            row.latency_ms, row.status, row.error = latency_ms, AdapterStatus.ready, None
            row.meta = {"method": "t2l", "hypernetwork": generator.identity.name}
            if new:
                s.add(row)
            s.flush()
            return self._adapter_info(s, row)

        return self._store_adapter(blob, write)

    def skill(self, adapter_id: int, *, namespace: str | None = None) -> AdapterInfo:
        """A skill adapter of this namespace by id."""
        ns = self._ns(namespace)
        with self._tx() as s:
            row = s.scalar(select(Adapter).join(Namespace, Adapter.namespace_id == Namespace.id)
                           .where(Adapter.id == adapter_id, Namespace.name == ns, Adapter.task_sha256.is_not(None)))
            if row is None:
                raise NotFoundError(f"no skill adapter {adapter_id} in namespace {ns!r}")
            return self._adapter_info(s, row)

    def as_tool(self, **kwargs: Any) -> Any:
        """This memory as a LangChain ``StructuredTool`` for agents (see ``integrations.langchain.memory_tool``)."""
        from integrations.langchain import memory_tool

        return memory_tool(self, **kwargs)

    def experiment(self, name: str, *, arms: Any, namespace: str | None = None) -> Any:
        """An online A/B experiment: each query key is assigned to an arm by a stable hash and logged.

        >>> exp = mem.experiment("policy-qa", arms={"adapter": {"mode": "parametric"}, "rag": {"mode": "retrieval"}})  # doctest: +SKIP
        >>> r = exp.query("How many days of leave?", user_key="user-42")  # doctest: +SKIP
        """
        from memory.evaluation.experiments import Experiment

        return Experiment(self, name, arms, namespace)
