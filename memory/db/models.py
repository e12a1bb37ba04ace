"""The data model: provenance is the product.

Every adapter row says which document version, which hypernetwork checkpoint, which base model and
which blob it came from. The same models run on SQLite (embedded) and PostgreSQL (server); every
schema change is an Alembic revision under ``migrations/versions``.
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# A constraint naming convention, so Alembic can drop/alter constraints by name on every backend
# (SQLite batch mode needs names to recreate tables).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(ts: datetime) -> datetime: ...
@overload
def as_utc(ts: None) -> None: ...
def as_utc(ts: datetime | None) -> datetime | None:
    """A timestamp read back from a timezone-aware column, aware and in UTC (the one convention of every
    result, CLI JSON and HTTP answer): SQLite hands back naive datetimes, written in UTC; PostgreSQL aware ones
    in the session's time zone."""
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def _ts(**kw: Any) -> Any:
    return mapped_column(DateTime(timezone=True), default=utcnow, **kw)


class AdapterStatus(str, enum.Enum):
    pending = "pending"
    ready = "ready"
    failed = "failed"
    superseded = "superseded"


class JobState(str, enum.Enum):
    queued = "queued"
    running = "running"
    retrying = "retrying"
    succeeded = "succeeded"
    failed = "failed"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as VARCHAR + CHECK on every backend (no native PG enum: simpler migrations).
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda e: [m.value for m in e],
    )


def new_stamp() -> str:
    """A fresh random token (32 hex digits): the change markers of retrieval indexes (:mod:`memory.db.stamps`).

    >>> len(new_stamp()), new_stamp() != new_stamp()
    (32, True)
    """
    return uuid.uuid4().hex


class Namespace(Base):
    """A tenant scope: nothing is visible or deletable across namespaces."""

    __tablename__ = "namespaces"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _ts()
    # A fresh random token whenever the namespace's set of current chunks or their metadata changes,
    # written in the same transaction (memory.db.stamps): the cheap change marker of retrieval indexes.
    index_stamp: Mapped[str | None] = mapped_column(String(32))
    # The number of that change (+1 each time): every document it touched gets it as its index_seq, so an index
    # synced at number s re-reads only the documents numbered above s...
    index_seq: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    # ...as long as this token is the one it synced under: a fresh one with the row and whenever a document is
    # deleted (a deleted row has no number to be found by), and the next sync of every index diffs every document.
    index_epoch: Mapped[str | None] = mapped_column(String(32), default=new_stamp)
    # What adding a document (or a new version) does here: none | instant | full (memory.services.namespaces);
    # NULL follows the PMEM_ON_ADD setting.
    on_add: Mapped[str | None] = mapped_column(String(16))


class Source(Base):
    """Where documents come from (a file, a directory, a glob, or inline text) and how often to re-read it."""

    __tablename__ = "sources"
    __table_args__ = (UniqueConstraint("namespace_id", "uri"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    uri: Mapped[str] = mapped_column(String(2048))
    kind: Mapped[str] = mapped_column(String(16))  # file | directory | glob | text
    refresh_interval_s: Mapped[int | None] = mapped_column(Integer)
    last_checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    parser: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = _ts()


class Document(Base):
    """A named document in a namespace; its content lives in versions."""

    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("namespace_id", "key"),
        Index("ix_documents_namespace_id_index_seq", "namespace_id", "index_seq"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(255))  # the user-visible document id
    source_id: Mapped[int | None] = mapped_column(ForeignKey("sources.id", ondelete="SET NULL"), index=True)
    title: Mapped[str | None] = mapped_column(String(512))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    current_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("document_versions.id", use_alter=True, ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = _ts()
    updated_at: Mapped[datetime] = _ts(onupdate=utcnow)
    # Optimistic concurrency: an UPDATE that lost a race raises StaleDataError.
    row_version: Mapped[int] = mapped_column(Integer, nullable=False)
    __mapper_args__ = {"version_id_col": row_version}
    # A fresh random token on every change of this document (never repeats, unlike SQLite row ids):
    # a retrieval index keys a chunk on (chunk id, this token).
    index_stamp: Mapped[str | None] = mapped_column(String(32))
    # The namespace's index_seq of the last change of this document.
    index_seq: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")

    versions: Mapped[list[DocumentVersion]] = relationship(
        back_populates="document",
        foreign_keys="DocumentVersion.document_id",
        order_by="DocumentVersion.number",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    current_version: Mapped[DocumentVersion | None] = relationship(foreign_keys=[current_version_id], post_update=True)


class DocumentVersion(Base):
    """One immutable content state of a document, keyed by the SHA-256 of its normalised text."""

    __tablename__ = "document_versions"
    __table_args__ = (
        UniqueConstraint("document_id", "number"),
        UniqueConstraint("document_id", "content_sha256"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, 3, ... per document
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)  # also the text blob's name
    byte_count: Mapped[int] = mapped_column(BigInteger)
    token_count: Mapped[int] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer)
    parser: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # name, version, strategy, filetype
    created_at: Mapped[datetime] = _ts()

    document: Mapped[Document] = relationship(back_populates="versions", foreign_keys=[document_id])
    chunks: Mapped[list[Chunk]] = relationship(
        back_populates="version", order_by="Chunk.ordinal", cascade="all, delete-orphan", passive_deletes=True
    )


class Chunk(Base):
    """A token-bounded piece of a version: the unit of D2L internalization and of retrieval."""

    __tablename__ = "chunks"
    __table_args__ = (UniqueConstraint("version_id", "ordinal"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("document_versions.id", ondelete="CASCADE"), index=True)
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    start_char: Mapped[int] = mapped_column(BigInteger)
    end_char: Mapped[int] = mapped_column(BigInteger)
    token_count: Mapped[int] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)  # page, section
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32, L2-normalised
    embedding_model: Mapped[str | None] = mapped_column(String(128))

    version: Mapped[DocumentVersion] = relationship(back_populates="chunks")


class Hypernetwork(Base):
    """A trained generator of adapters (d2l | t2l), or an internalization method such as context distillation."""

    __tablename__ = "hypernetworks"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # d2l | t2l | cd
    name: Mapped[str] = mapped_column(String(128))
    base_model: Mapped[str] = mapped_column(String(256))
    checkpoint_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    training_run: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    eval_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = _ts()


class Adapter(Base):
    """A LoRA adapter stored as a content-addressed blob, with its full provenance."""

    __tablename__ = "adapters"
    __table_args__ = (
        # Idempotency: one adapter per (version, hypernetwork) and per (namespace, task, hypernetwork).
        UniqueConstraint("version_id", "hypernetwork_id"),
        UniqueConstraint("namespace_id", "task_sha256", "hypernetwork_id"),
        Index("ix_adapters_namespace_id_status", "namespace_id", "status"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    version_id: Mapped[int | None] = mapped_column(ForeignKey("document_versions.id", ondelete="CASCADE"))
    task_description: Mapped[str | None] = mapped_column(Text)  # skill adapters (T2L)
    task_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    hypernetwork_id: Mapped[int] = mapped_column(ForeignKey("hypernetworks.id", ondelete="RESTRICT"), index=True)
    base_model: Mapped[str] = mapped_column(String(256))
    target_modules: Mapped[list[Any]] = mapped_column(JSON, default=list)
    rank: Mapped[int] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer, default=1)
    blob_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    synthetic_sha256: Mapped[str | None] = mapped_column(String(64), index=True)  # self-study's training data
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    status: Mapped[AdapterStatus] = mapped_column(_enum(AdapterStatus, "adapter_status"), default=AdapterStatus.pending)
    error: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = _ts()
    updated_at: Mapped[datetime] = _ts(onupdate=utcnow)
    row_version: Mapped[int] = mapped_column(Integer, nullable=False)
    __mapper_args__ = {"version_id_col": row_version}

    hypernetwork: Mapped[Hypernetwork] = relationship()
    version: Mapped[DocumentVersion | None] = relationship()


class Job(Base):
    """A unit of background work (ingest, internalize, refresh), in-process or on a Celery worker."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int | None] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    celery_id: Mapped[str | None] = mapped_column(String(64), index=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _ts()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    row_version: Mapped[int] = mapped_column(Integer, nullable=False)
    __mapper_args__ = {"version_id_col": row_version}


class QueryLog(Base):
    """One answered query: how it was answered and why, for A/B comparison and feedback."""

    __tablename__ = "query_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"), index=True)
    query: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    experiment: Mapped[str | None] = mapped_column(String(128), index=True)
    arm: Mapped[str | None] = mapped_column(String(64))
    adapter_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    chunk_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    answer: Mapped[str | None] = mapped_column(Text)
    feedback: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = _ts()


class ApiKey(Base):
    """A server API key: only the SHA-256 of its secret is stored; scoped to namespaces with a role.

    ``namespaces`` is a list of namespace names, or ``["*"]`` for every namespace. ``role`` is ``read``
    (get, list, search, query), ``write`` (also add, delete, internalize, feedback) or ``admin`` (also
    sources and maintenance).
    """

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_id: Mapped[str] = mapped_column(String(16), unique=True)  # the public part of the key, for lookup
    secret_sha256: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(8))
    namespaces: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = _ts()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def __repr__(self) -> str:  # never the secret's hash
        return f"ApiKey(key_id={self.key_id!r}, name={self.name!r}, role={self.role!r}, namespaces={self.namespaces!r})"


__all__ = [
    "NAMING_CONVENTION",
    "Adapter",
    "AdapterStatus",
    "ApiKey",
    "Base",
    "Chunk",
    "Document",
    "DocumentVersion",
    "Hypernetwork",
    "Job",
    "JobState",
    "Namespace",
    "QueryLog",
    "Source",
    "new_stamp",
]
