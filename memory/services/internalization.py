"""Internalization: a document version in, a ready LoRA adapter row and blob out (in-process; idempotent).

The worker task and :meth:`memory.api.ParametricMemory.internalize` both end here. A version is
internalized once per hypernetwork: the blob is content-addressed and the row unique per (version,
hypernetwork), so two callers racing on the same version end with one adapter.

An internalizer with a ``study`` method (self-study, the full tier) also returns its provenance (teacher,
synthetic-data counts and hash, steps, losses, seconds, fidelity), kept in the row's metadata, and its
synthetic data, kept as a blob (``synthetic_sha256``) for a later Doc-to-LoRA meta-training to reuse. The
instant adapter of the same version stays, as provenance; the registry serves the full tier's once ready.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.db import Adapter, AdapterStatus, DocumentVersion
from memory.errors import NotFoundError, PMemError
from memory.services.adapters import AdapterRegistry, adapter_info, hypernetwork_row
from memory.services.models import ModelRuntime
from memory.services.records import Records
from memory.types import AdapterInfo

log = logging.getLogger(__name__)


class Internalization:
    """Turns document versions into adapters with the runtime's internalizers and files them in the registry."""

    def __init__(self, records: Records, registry: AdapterRegistry, runtime: ModelRuntime) -> None:
        self.records = records
        self.registry = registry
        self.runtime = runtime

    def internalize(
        self,
        document_id: str,
        *,
        namespace: str | None = None,
        version: int | None = None,
        method: str = "auto",
        force: bool = False,
    ) -> AdapterInfo:
        """See :meth:`memory.api.ParametricMemory.internalize`."""
        rec = self.records
        ns = rec.namespace(namespace)
        with rec.tx() as s:
            version_id = rec.version(s, rec.document(s, ns, document_id), version).id
        return self.internalize_version(version_id, method=method, force=force)

    def internalize_version(
        self, version_id: int, *, method: str = "auto", force: bool = False, progress: Any = None
    ) -> AdapterInfo:
        """See :meth:`memory.api.ParametricMemory.internalize_version`."""
        from memory.lora import to_bytes

        rec, runtime = self.records, self.runtime
        internalizer = runtime.internalizer(method)
        ident = internalizer.identity
        with rec.tx() as s:
            v = s.get(DocumentVersion, version_id)
            if v is None:
                raise NotFoundError(f"no document version with id {version_id}")
            hyper_id = hypernetwork_row(s, ident, runtime.base_model.fingerprint)
            existing = s.scalar(
                select(Adapter).where(Adapter.version_id == version_id, Adapter.hypernetwork_id == hyper_id)
            )
            if (
                existing is not None
                and existing.status in (AdapterStatus.ready, AdapterStatus.superseded)
                and not force
            ):
                return adapter_info(s, existing)
            content_sha, chunk_count = v.content_sha256, v.chunk_count
            namespace_id = v.document.namespace_id
        text = rec.blobs.get(content_sha).decode("utf-8")  # hash-verified
        t0 = time.perf_counter()
        provenance: dict[str, Any] = {}
        synthetic: bytes | None = None
        try:
            if hasattr(internalizer, "study"):
                # a job killed half-way (worker lost, restart) resumes from its state under PMEM_HOME/work
                work = runtime.settings.home / "work"
                result = internalizer.study(runtime.base_model, text, progress=progress, work_dir=work)
                adapter, provenance = result.adapter, result.provenance()
                synthetic = result.data_json
            else:
                adapter = internalizer.internalize(runtime.base_model, text, progress=progress)
            blob = to_bytes(adapter)
        except PMemError as e:
            self.registry.record_failure(version_id, hyper_id, namespace_id, runtime.base_model.fingerprint, str(e))
            raise
        except Exception as e:  # a bug or a resource fault: record it on the row, then re-raise
            self.registry.record_failure(
                version_id, hyper_id, namespace_id, runtime.base_model.fingerprint, f"{type(e).__name__}: {e}"
            )
            raise
        latency_ms = (time.perf_counter() - t0) * 1000

        def write(s: Session, sha: str) -> AdapterInfo:
            v = s.get(DocumentVersion, version_id)
            if v is None:
                raise NotFoundError(f"document version {version_id} was deleted while it was internalized")
            row = s.scalar(select(Adapter).where(Adapter.version_id == version_id, Adapter.hypernetwork_id == hyper_id))
            if row is not None and row.status in (AdapterStatus.ready, AdapterStatus.superseded) and not force:
                return adapter_info(s, row)  # another worker won the race
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
            row.meta = {"method": ident.kind, "hypernetwork": ident.name, **provenance}
            if synthetic_sha is not None and synthetic is not None:
                rec.hold_blob(s, synthetic_sha, synthetic)  # a concurrent gc may have swept it since the put
            row.synthetic_sha256 = synthetic_sha
            if new:
                s.add(row)
            s.flush()
            return adapter_info(s, row)

        synthetic_sha = None
        if synthetic is not None:  # written first; referenced by the row that the registry commits next
            synthetic_sha = rec.blobs.put(synthetic)
        try:
            info = self.registry.store(blob, write)
        except BaseException:
            if synthetic_sha is not None:
                rec.drop_unreferenced([synthetic_sha])
            raise
        log.info(
            "internalized version %s with %s in %.0f ms (rank %s, %s bytes)",
            version_id,
            ident.kind,
            latency_ms,
            info.rank,
            info.size_bytes,
        )
        return info
