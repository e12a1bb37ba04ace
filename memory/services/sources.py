"""Sources: files, directories and globs parsed with Unstructured into documents, and their bookkeeping.

Each file becomes one document through :class:`~memory.services.documents.DocumentStore`; the source row
records its kind, refresh interval, parser versions, last check and last error (what the scheduled refresh
reads).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.db import Document, Namespace, Source
from memory.db.models import as_utc
from memory.errors import PMemError, ValidationError
from memory.ingest import chunk_text, normalize_text
from memory.services.documents import DocumentStore
from memory.services.records import Records
from memory.types import AddResult

log = logging.getLogger(__name__)


class SourceIngestor:
    """Adds the files of a source as documents and keeps the source's row current."""

    def __init__(self, records: Records, documents: DocumentStore) -> None:
        self.records = records
        self.documents = documents

    def add_source(
        self,
        spec: str,
        *,
        namespace: str | None = None,
        document_id: str | None = None,
        title: str | None = None,
        refresh_interval_s: int | None = None,
        prune_missing: bool = False,
    ) -> list[AddResult]:
        """See :meth:`memory.api.ParametricMemory.add_source`."""
        from memory.ingest import chunk_document, document_key, partition_path, scan_source

        docs = self.documents
        ns = self.records.namespace(namespace)
        if refresh_interval_s is not None and (not isinstance(refresh_interval_s, int) or refresh_interval_s < 1):
            raise ValidationError(f"refresh_interval_s must be a positive integer, got {refresh_interval_s!r}")
        if isinstance(spec, str) and spec and "\x00" not in spec:
            # Resolved now, against this process's directory: a refresh elsewhere must read the same files.
            spec = os.path.abspath(os.path.expanduser(spec))
        scan = scan_source(spec)
        if document_id is not None and len(scan.files) != 1:
            raise ValidationError(f"document_id names one document but {spec!r} holds {len(scan.files)} files")
        uri = str(scan.root / Path(spec).name) if scan.kind == "file" else str(spec)
        owner = self._owning_source(ns, scan.files[0]) if scan.kind == "file" and document_id is None else None
        if owner is not None:  # one file of a directory (or glob) source: update that source's document
            uri, scan.root = owner
        results: list[AddResult] = []
        errors: list[str] = []
        for path in scan.files:
            shown = str(path)
            try:
                parsed = partition_path(path, max_bytes=docs.max_document_bytes)
                normalised = normalize_text(parsed.text)
                if normalised == parsed.text:
                    chunks = chunk_document(parsed, docs.chunk_tokens)
                else:  # offsets would not match the stored text: chunk the normalised text instead
                    chunks = chunk_text(normalised, docs.chunk_tokens)
                key = document_id or document_key(path, scan.root)
                self._check_key_owner(ns, key, uri)
                results.append(
                    docs.add(
                        normalised,
                        document_id=key,
                        namespace=ns,
                        title=title,
                        parser=parsed.parser,
                        source=uri,
                        chunks=chunks,
                        metadata={"source_path": shown, "filetype": parsed.filetype},
                    )
                )
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
            with self.records.tx() as s:
                gone = list(
                    s.scalars(
                        select(Document.key)
                        .join(Source, Document.source_id == Source.id)
                        .join(Namespace, Document.namespace_id == Namespace.id)
                        .where(Namespace.name == ns, Source.uri == uri)
                        .order_by(Document.key)
                    )
                )
            for key in (k for k in gone if k not in present):
                docs.delete(key, namespace=ns)
                log.info("%s is gone from %s: document deleted", key, uri)
                results.append(AddResult("removed", None, source=key))
        if owner is None:  # (a file of another source leaves that source's record as its last re-read left it)
            self._record(ns, uri, scan.kind, refresh_interval_s, errors)
        return results

    def _owning_source(self, ns: str, path: Path) -> tuple[str, Path] | None:
        """The directory or glob source of ``ns`` that holds the file ``path`` (its uri and root), if any: the
        one whose document the file already is, else the one with the deepest root."""
        from memory.ingest import document_key, scan_source

        with self.records.tx() as s:
            rows = list(
                s.execute(
                    select(Source.id, Source.uri, Source.kind)
                    .join(Namespace, Source.namespace_id == Namespace.id)
                    .where(Namespace.name == ns, Source.kind.in_(("directory", "glob")))
                ).tuples()
            )
        found: list[tuple[bool, int, str, Path]] = []
        for source_id, uri, kind in rows:
            try:
                if kind == "glob":
                    scan = scan_source(uri)
                    if path not in scan.files:
                        continue
                    root = scan.root
                else:
                    root = Path(os.path.abspath(os.path.expanduser(uri)))
                    path.relative_to(root)
                key = document_key(path, root)
            except (PMemError, ValueError):
                continue
            with self.records.tx() as s:
                has = s.scalar(select(Document.id).where(Document.source_id == source_id, Document.key == key))
            found.append((has is not None, len(root.parts), uri, root))
        if not found:
            return None
        _, _, uri, root = max(found)
        return uri, root

    def _check_key_owner(self, ns: str, key: str, uri: str) -> None:
        """Refuse a file whose document id already belongs to another source's document in ``ns``.

        Two sources' keys are each relative to their own root (``teamA/index.json`` and
        ``teamB/index.json`` are both ``index.json``): without this, one source's refresh would replace, and
        its pruning delete, the other's document.
        """
        with self.records.tx() as s:
            owner = s.scalar(
                select(Source.uri)
                .join(Document, Document.source_id == Source.id)
                .join(Namespace, Document.namespace_id == Namespace.id)
                .where(Namespace.name == ns, Document.key == key)
            )
        if owner is not None and os.path.abspath(os.path.expanduser(owner)) != uri:  # (older rows: relative)
            raise ValidationError(
                f"document {key!r} in namespace {ns!r} already comes from the source {owner}; add this source to "
                "another namespace, or add the file with its own document id"
            )

    def _record(self, ns: str, uri: str, kind: str, refresh_interval_s: int | None, errors: list[str]) -> None:
        from memory.db.models import utcnow
        from memory.ingest.offline import spacy_info, unstructured_version

        def write(s: Session) -> None:
            ns_row = self.records.namespace_row(s, ns, create=True)
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
            src.parser = {
                "library": "unstructured",
                "version": unstructured_version(),
                "strategy": "fast",
                "spacy": spacy_info(),
            }

        self.records.retrying(write)

    def sources(self, *, namespace: str | None = None) -> list[dict[str, Any]]:
        """See :meth:`memory.api.ParametricMemory.sources`."""
        ns = self.records.namespace(namespace)
        with self.records.tx() as s:
            rows = s.scalars(
                select(Source)
                .join(Namespace, Source.namespace_id == Namespace.id)
                .where(Namespace.name == ns)
                .order_by(Source.uri)
            )
            return [
                {
                    "uri": r.uri,
                    "kind": r.kind,
                    "refresh_interval_s": r.refresh_interval_s,
                    "last_checked_at": as_utc(r.last_checked_at),
                    "last_error": r.last_error,
                    "parser": r.parser,
                }
                for r in rows
            ]
