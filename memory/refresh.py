"""Scheduled refresh: re-read the sources whose refresh interval is due and re-internalize what changed.

A source is due when it has a ``refresh_interval_s`` and was last checked at least that long ago (or
never). Re-reading goes through ``ParametricMemory.add_source``, which hashes each file's normalised text:
same content is ``unchanged`` (nothing happens), new content becomes a new version, and a file that is
gone from a directory or glob source has its document deleted (``removed``). Each new (or
restored) version is handed to ``enqueue(version_id)``; the workers turn it into an adapter, and the
facade marks the previous version's adapter ``superseded`` (``rollback`` makes it ready again).

>>> from memory.refresh import refresh_sources
>>> report = refresh_sources(mem, enqueue=lambda version_id: None)  # doctest: +SKIP
>>> report.changed  # doctest: +SKIP
[{'document': 'policy.md', 'version': 2, 'version_id': 7, 'status': 'new_version', ...}]
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from memory.db import Document, DocumentVersion, Namespace, Source, session_factory
from memory.db.models import as_utc
from memory.ingest.sources import check_ingest_root
from memory.jobs import classify, describe
from memory.types import AddResult

log = logging.getLogger(__name__)

#: ``add_source`` statuses whose version needs an adapter.
CHANGED = ("created", "new_version", "restored")

Enqueue = Callable[[int], Any]


@dataclass(frozen=True)
class DueSource:
    id: int
    uri: str
    namespace: str
    refresh_interval_s: int | None
    last_checked_at: datetime | None


@dataclass
class SourceReport:
    """What one source's re-read did."""

    source: str
    namespace: str
    changed: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0
    removed: list[str] = field(default_factory=list)  # documents whose file is gone (deleted)
    failed: list[dict[str, Any]] = field(default_factory=list)  # files that failed alone
    error: str | None = None  # the whole source failed (e.g. the directory is gone)


@dataclass
class RefreshReport:
    checked: list[SourceReport] = field(default_factory=list)

    @property
    def changed(self) -> list[dict[str, Any]]:
        return [c for s in self.checked for c in s.changed]

    @property
    def removed(self) -> list[str]:
        return [d for s in self.checked for d in s.removed]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [f for s in self.checked for f in s.failed] + [
            {"source": s.source, "error": s.error} for s in self.checked if s.error
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": len(self.checked),
            "changed": self.changed,
            "removed": self.removed,
            "failed": self.failed,
            "unchanged": sum(s.unchanged for s in self.checked),
            "checked": [asdict(s) for s in self.checked],
        }


def due_sources(
    mem: Any, *, namespace: str | None = None, now: datetime | None = None, force: bool = False
) -> list[DueSource]:
    """Sources with a refresh interval that is due at ``now`` (all sources with an interval if ``force``).

    >>> [s.uri for s in due_sources(mem)]  # doctest: +SKIP
    ['/data/policies']
    """
    now = now or datetime.now(UTC)
    q = (
        select(Source, Namespace.name)
        .join(Namespace, Source.namespace_id == Namespace.id)
        .where(Source.refresh_interval_s.is_not(None))
        .order_by(Source.id)
    )
    if namespace is not None:
        q = q.where(Namespace.name == namespace)
    out = []
    with session_factory(mem.engine)() as s:
        for src, ns in s.execute(q):
            last = as_utc(src.last_checked_at)
            if force or last is None or last + timedelta(seconds=src.refresh_interval_s or 0) <= now:
                out.append(DueSource(src.id, src.uri, ns, src.refresh_interval_s, last))
    return out


def version_id_for(mem: Any, namespace: str, document_id: str, number: int) -> int:
    """The database id of version ``number`` of a document (what workers and jobs are given)."""
    with session_factory(mem.engine)() as s:
        vid = s.scalar(
            select(DocumentVersion.id)
            .join(Document, DocumentVersion.document_id == Document.id)
            .join(Namespace, Document.namespace_id == Namespace.id)
            .where(Namespace.name == namespace, Document.key == document_id, DocumentVersion.number == number)
        )
    if vid is None:
        from memory.errors import NotFoundError

        raise NotFoundError(f"no version {number} of {document_id!r} in namespace {namespace!r}")
    return vid


def changed_versions(
    mem: Any, results: list[AddResult], namespace: str
) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
    """Split ``add_source`` results into changed versions (with their ids), an unchanged count and failures."""
    changed, failed, unchanged = [], [], 0
    for r in results:
        if r.status == "removed":
            continue  # reported by the caller from the results; nothing to internalize
        if r.status == "failed" or r.document is None or r.document.version is None:
            failed.append({"source": r.source, "error": r.error or "failed"})
        elif r.status in CHANGED:
            v = r.document.version
            changed.append(
                {
                    "document": r.document.id,
                    "namespace": namespace,
                    "version": v.number,
                    "version_id": version_id_for(mem, namespace, r.document.id, v.number),
                    "content_sha256": v.content_sha256,
                    "status": r.status,
                    "source": r.source,
                }
            )
        else:
            unchanged += 1
    return changed, unchanged, failed


def _mark_checked(mem: Any, source_id: int, now: datetime, error: str) -> None:
    with session_factory(mem.engine)() as s, s.begin():
        src = s.get(Source, source_id)
        if src is not None:
            src.last_checked_at = now
            src.last_error = error


def refresh_sources(
    mem: Any,
    *,
    namespace: str | None = None,
    force: bool = False,
    now: datetime | None = None,
    enqueue: Enqueue | None = None,
    roots: str | None = None,
) -> RefreshReport:
    """Re-read every due source; hand each new version to ``enqueue(version_id)``.

    ``roots`` (a worker's ``PMEM_INGEST_ROOTS``): a source outside them fails with that error instead.

    A source that fails as a whole (its directory vanished) gets ``last_error`` and does not stop the others.

    >>> refresh_sources(mem, force=True, enqueue=print).to_dict()["sources"]  # doctest: +SKIP
    1
    """
    now = now or datetime.now(UTC)
    report = RefreshReport()
    for src in due_sources(mem, namespace=namespace, now=now, force=force):
        sr = SourceReport(source=src.uri, namespace=src.namespace)
        try:
            check_ingest_root(src.uri, roots)
            results = mem.add_source(  # internalization is enqueue's (memory.submission.refresh_tier)
                src.uri,
                namespace=src.namespace,
                refresh_interval_s=src.refresh_interval_s,
                prune_missing=True,
                on_add="none",
            )
            sr.changed, sr.unchanged, sr.failed = changed_versions(mem, results, src.namespace)
            sr.removed = [r.source or "" for r in results if r.status == "removed"]
        except Exception as e:  # one bad source must not stop the refresh of the others
            if classify(e) == "transient":
                raise  # the database or the network, not the source: the whole refresh is retried
            sr.error = describe(e)
            log.warning("refresh of %s failed: %s", src.uri, sr.error)
            # add_source did not get to record this check: do it here, or the source stays due forever
            _mark_checked(mem, src.id, now, sr.error)
        if enqueue is not None:
            for c in sr.changed:
                c["job"] = _job_ref(enqueue(c["version_id"]))
        log.info(
            "refreshed %s: %d changed, %d unchanged, %d removed, %d failed",
            src.uri,
            len(sr.changed),
            sr.unchanged,
            len(sr.removed),
            len(sr.failed),
        )
        report.checked.append(sr)
    return report


def _job_ref(job: Any) -> Any:
    return getattr(job, "id", job)


__all__ = [
    "CHANGED",
    "DueSource",
    "RefreshReport",
    "SourceReport",
    "changed_versions",
    "due_sources",
    "refresh_sources",
    "version_id_for",
]
