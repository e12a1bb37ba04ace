"""Adapter rows and weights: provenance, finding them, which adapters are current for documents, compose, load.

Every adapter (a document version's knowledge adapter, or a skill adapter made from a task description) is
a row with its provenance and a content-addressed safetensors blob. :meth:`AdapterRegistry.store` writes the
blob before the row and never leaves an orphan; :meth:`AdapterRegistry.current` is the one place that
decides which adapter stands for a document (the query engine and the integrations both use it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.db import Adapter, AdapterStatus, Document, DocumentVersion, Hypernetwork, Namespace
from memory.db.models import as_utc
from memory.errors import NotFoundError, ValidationError
from memory.services.records import Records
from memory.storage import sha256_hex
from memory.types import AdapterInfo

log = logging.getLogger(__name__)


def adapter_info(
    s: Session,
    a: Adapter,
    v: DocumentVersion | None = None,
    doc: Document | None = None,
    ns: Namespace | None = None,
    h: Hypernetwork | None = None,
) -> AdapterInfo:
    """An adapter with its provenance; rows already loaded by a joined query are passed in, others fetched."""
    v = v or (s.get(DocumentVersion, a.version_id) if a.version_id else None)
    doc = doc or (s.get(Document, v.document_id) if v else None)
    ns = ns or s.get(Namespace, a.namespace_id)
    h = h or s.get(Hypernetwork, a.hypernetwork_id)
    return AdapterInfo(
        id=a.id,
        namespace=ns.name if ns else "?",
        document_id=doc.key if doc else None,
        version=v.number if v else None,
        task_description=a.task_description,
        method=h.kind if h else "?",
        hypernetwork=f"{h.name}@{h.checkpoint_sha256[:12]}" if h else "?",
        base_model=a.base_model,
        target_modules=list(a.target_modules or []),
        rank=a.rank,
        chunk_count=a.chunk_count,
        blob_sha256=a.blob_sha256,
        size_bytes=a.size_bytes,
        latency_ms=a.latency_ms,
        status=a.status.value,
        error=a.error,
        created_at=as_utc(a.created_at),
        tier=tier_of(h.kind if h else ""),
        fidelity=dict((a.meta or {}).get("fidelity") or {}),
        provenance={k: v for k, v in (a.meta or {}).items() if k != "fidelity"},
        synthetic_sha256=a.synthetic_sha256,
    )


FULL_TIER = frozenset({"self-study"})


def tier_of(method: str) -> str:
    """``full`` for the quality tier (self-study), ``instant`` for the rest (Doc-to-LoRA, context distillation).

    >>> tier_of("self-study"), tier_of("d2l")
    ('full', 'instant')
    """
    return "full" if method in FULL_TIER else "instant"


def reads_passages(info: AdapterInfo) -> bool:
    """Was the adapter trained with its document in the student's prompt too (self-study's in-context samples),
    so that it may be applied beside retrieved passages without spoiling their reading (``auto`` answers in
    ``hybrid`` with it)? Read from the recipe kept in its provenance."""
    config = (info.provenance or {}).get("config") or {}
    return int(config.get("in_context_per_chunk") or 0) > 0


def trained_chunks(info: AdapterInfo) -> int | None:
    """How many chunks of its document the adapter was trained on (self-study keeps it in its provenance's
    synthetic counts); None when it was not recorded (Doc-to-LoRA, context distillation)."""
    counts = (info.provenance or {}).get("synthetic_counts") or {}
    chunks = counts.get("chunks")
    return int(chunks) if chunks is not None else None


def hypernetwork_row(s: Session, ident: Any, base_fingerprint: str) -> int:
    """The id of the :class:`Hypernetwork` row of ``ident`` (an internalizer identity), registered on first use."""
    row = s.scalar(select(Hypernetwork).where(Hypernetwork.checkpoint_sha256 == ident.checkpoint_sha256))
    if row is None:
        try:
            with s.begin_nested():
                row = Hypernetwork(
                    kind=ident.kind,
                    name=ident.name,
                    base_model=base_fingerprint,
                    checkpoint_sha256=ident.checkpoint_sha256,
                    config=ident.config,
                    eval_metrics=ident.eval_metrics,
                )
                s.add(row)
                s.flush()
        except sa_exc.IntegrityError:  # registered concurrently
            row = s.scalar(select(Hypernetwork).where(Hypernetwork.checkpoint_sha256 == ident.checkpoint_sha256))
    assert row is not None
    return row.id


class AdapterRegistry:
    """Adapter rows and their weights.

    Args:
        records: the shared database and blob store.
        cache_size: how many decoded adapters stay in memory (LRU).
    """

    def __init__(self, records: Records, *, cache_size: int) -> None:
        self.records = records
        self.cache_size = cache_size
        self._cache: Any = None  # torch is imported only when adapters are loaded

    def find(
        self, *, namespace: str | None = None, document_id: str | None = None, status: str | None = None
    ) -> list[AdapterInfo]:
        """See :meth:`memory.api.ParametricMemory.adapters`."""
        rec = self.records
        ns = rec.namespace(namespace)
        if status is not None and status not in {m.value for m in AdapterStatus}:
            raise ValidationError(f"status must be one of {[m.value for m in AdapterStatus]}, got {status!r}")
        with rec.tx() as s:
            # One joined query for the adapters and their provenance (skill adapters have no version/document).
            q = (
                select(Adapter, DocumentVersion, Document, Namespace, Hypernetwork)
                .join(Namespace, Adapter.namespace_id == Namespace.id)
                .join(Hypernetwork, Adapter.hypernetwork_id == Hypernetwork.id)
                .outerjoin(DocumentVersion, Adapter.version_id == DocumentVersion.id)
                .outerjoin(Document, DocumentVersion.document_id == Document.id)
                .where(Namespace.name == ns)
                .order_by(Adapter.id.desc())
            )
            if document_id is not None:
                doc = rec.document(s, ns, document_id)
                q = q.where(DocumentVersion.document_id == doc.id)
            if status is not None:
                q = q.where(Adapter.status == AdapterStatus(status))
            return [adapter_info(s, a, v, d, n, h) for a, v, d, n, h in s.execute(q)]

    def current(
        self, namespace: str | None, document_ids: Iterable[str], *, ready_only: bool = False
    ) -> dict[str, AdapterInfo]:
        """For each document, the adapter of its current version: the newest ready one of the full tier
        (self-study) when there is one, else the newest ready instant one, else (unless ``ready_only``) the
        oldest of the others, whose status says why it cannot be used."""
        ids = sorted(set(document_ids))
        if not ids:
            return {}
        ns = self.records.namespace(namespace)
        out: dict[str, AdapterInfo] = {}
        with self.records.tx() as s:
            rows = s.execute(
                select(Adapter, DocumentVersion, Document, Namespace, Hypernetwork)
                .join(Document, Document.current_version_id == Adapter.version_id)
                .join(DocumentVersion, DocumentVersion.id == Adapter.version_id)
                .join(Namespace, Document.namespace_id == Namespace.id)
                .join(Hypernetwork, Adapter.hypernetwork_id == Hypernetwork.id)
                .where(Namespace.name == ns, Document.key.in_(ids))
                .order_by(Adapter.id)
            ).all()
            for a, v, doc, n, h in rows:
                have = out.get(doc.key)
                if have is None or (
                    a.status == AdapterStatus.ready
                    and not (
                        have.status == AdapterStatus.ready.value and have.tier == "full" and h.kind not in FULL_TIER
                    )
                ):
                    out[doc.key] = adapter_info(s, a, v, doc, n, h)
        if ready_only:
            out = {d: a for d, a in out.items() if a.status == AdapterStatus.ready.value and a.blob_sha256}
        return out

    def load(self, info: AdapterInfo) -> Any:
        """Decode a stored adapter (hash-verified, LRU-cached)."""
        sha = info.blob_sha256
        if not sha:
            raise NotFoundError(f"adapter {info.id} has no blob (status {info.status})")
        if self._cache is None:
            from memory.lora import AdapterCache

            self._cache = AdapterCache(self.cache_size)
        return self._cache.get_or_load(sha, lambda: self.records.blobs.get(sha))

    def compose(self, infos: list[AdapterInfo]) -> Any:
        """Several adapters applied together (rank concatenation: the deltas add up); ``None`` for none."""
        if not infos:
            return None
        from memory.lora import concat

        loras = [self.load(i) for i in infos]
        return loras[0] if len(loras) == 1 else concat(loras)

    def store(self, blob: bytes, write: Callable[[Session, str], AdapterInfo]) -> AdapterInfo:
        """Write an adapter blob, then its row (``write(session, sha)``); never leave an orphan blob.

        When a concurrent caller committed first, ``write`` returns that row and our copy is dropped
        (content-addressed: usually the very same bytes).
        """
        rec = self.records
        sha = sha256_hex(blob)
        existed = rec.blobs.exists(sha)
        rec.blobs.put(blob)

        def held(s: Session) -> AdapterInfo:
            rec.hold_blob(s, sha, blob)
            return write(s, sha)

        try:
            info = rec.retrying(held)
        except BaseException:
            if not existed:
                rec.drop_unreferenced([sha])
            raise
        if info.blob_sha256 != sha and not existed:
            rec.drop_unreferenced([sha])
        return info

    def record_failure(self, version_id: int, hyper_id: int, namespace_id: int, base_model: str, error: str) -> None:
        """Mark the adapter of (version, hypernetwork) failed with ``error`` (unless a ready one exists)."""

        def write(s: Session) -> None:
            row = s.scalar(select(Adapter).where(Adapter.version_id == version_id, Adapter.hypernetwork_id == hyper_id))
            if row is None:
                row = Adapter(
                    namespace_id=namespace_id,
                    version_id=version_id,
                    hypernetwork_id=hyper_id,
                    base_model=base_model,
                    rank=0,
                    target_modules=[],
                )
                s.add(row)
            if row.status != AdapterStatus.ready:
                row.status = AdapterStatus.failed
                row.error = error[:10000]

        self.records.retrying(write)
