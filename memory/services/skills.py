"""Skill adapters: a plain-language task description turned into a stored adapter by Text-to-LoRA."""

from __future__ import annotations

import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.db import Adapter, AdapterStatus, Namespace
from memory.errors import NotFoundError, ValidationError
from memory.ingest import normalize_text
from memory.services.adapters import AdapterRegistry, adapter_info, hypernetwork_row
from memory.services.models import ModelRuntime
from memory.services.records import Records
from memory.storage import sha256_hex
from memory.types import AdapterInfo


class SkillLibrary:
    """Skill adapters per namespace, one per (normalised description, hypernetwork)."""

    def __init__(self, records: Records, registry: AdapterRegistry, runtime: ModelRuntime) -> None:
        self.records = records
        self.registry = registry
        self.runtime = runtime

    def specialize(
        self, description: str, *, namespace: str | None = None, checkpoint: str | None = None
    ) -> AdapterInfo:
        """See :meth:`memory.api.ParametricMemory.specialize`."""
        from memory.lora import to_bytes

        rec = self.records
        ns = rec.namespace(namespace)
        if not isinstance(description, str) or not description.strip():
            raise ValidationError("a skill description must be a non-empty string")
        generator = self.runtime.skill_generator(checkpoint)
        task_sha = sha256_hex(normalize_text(description).encode("utf-8"))
        with rec.tx() as s:
            ns_row = rec.namespace_row(s, ns, create=True)
            assert ns_row is not None
            hyper_id = hypernetwork_row(s, generator.identity, self.runtime.base_model.fingerprint)
            row = s.scalar(
                select(Adapter).where(
                    Adapter.namespace_id == ns_row.id,
                    Adapter.task_sha256 == task_sha,
                    Adapter.hypernetwork_id == hyper_id,
                )
            )
            if row is not None and row.status == AdapterStatus.ready:
                return adapter_info(s, row)
            namespace_id = ns_row.id
        t0 = time.perf_counter()
        adapter = generator.generate(description)
        latency_ms = (time.perf_counter() - t0) * 1000
        blob = to_bytes(adapter)

        def write(s: Session, sha: str) -> AdapterInfo:
            row = s.scalar(
                select(Adapter).where(
                    Adapter.namespace_id == namespace_id,
                    Adapter.task_sha256 == task_sha,
                    Adapter.hypernetwork_id == hyper_id,
                )
            )
            if row is not None and row.status == AdapterStatus.ready:
                return adapter_info(s, row)
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
            return adapter_info(s, row)

        return self.registry.store(blob, write)

    def get(self, adapter_id: int, *, namespace: str | None = None) -> AdapterInfo:
        """A skill adapter of this namespace by id."""
        ns = self.records.namespace(namespace)
        with self.records.tx() as s:
            row = s.scalar(
                select(Adapter)
                .join(Namespace, Adapter.namespace_id == Namespace.id)
                .where(Adapter.id == adapter_id, Namespace.name == ns, Adapter.task_sha256.is_not(None))
            )
            if row is None:
                raise NotFoundError(f"no skill adapter {adapter_id} in namespace {ns!r}")
            return adapter_info(s, row)
