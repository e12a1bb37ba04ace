"""Database layer: SQLAlchemy 2.x models, engines and sessions, Alembic migrations. Knows nothing of torch."""

from memory.db import stamps  # noqa: F401  (registers the change markers on every Session)
from memory.db.models import (
    Adapter,
    AdapterStatus,
    ApiKey,
    Base,
    Chunk,
    Document,
    DocumentVersion,
    Hypernetwork,
    Job,
    JobState,
    Namespace,
    QueryLog,
    Source,
)
from memory.db.session import dispose_engines, get_engine, lock_blobs, session_factory, session_scope

__all__ = [
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
    "dispose_engines",
    "get_engine",
    "lock_blobs",
    "session_factory",
    "session_scope",
]
