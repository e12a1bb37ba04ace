"""Plain result objects returned by the facade (no ORM rows leak out of ``memory.api``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


class _Record:
    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))  # type: ignore[call-overload]


@dataclass(frozen=True)
class VersionInfo(_Record):
    number: int
    content_sha256: str
    is_current: bool
    byte_count: int
    token_count: int
    chunk_count: int
    parser: dict[str, Any]
    created_at: datetime
    adapter_status: str | None = None  # status of the newest adapter of this version, if any


@dataclass(frozen=True)
class DocumentInfo(_Record):
    id: str
    namespace: str
    title: str | None
    metadata: dict[str, Any]
    version: VersionInfo | None
    version_count: int
    source: str | None
    created_at: datetime
    updated_at: datetime
    text: str | None = None  # filled by ``get(..., with_text=True)``


AddStatus = Literal["created", "new_version", "unchanged", "restored"]


@dataclass(frozen=True)
class AddResult(_Record):
    """What ``add`` did: a new document, a new version, nothing (same content), or an old version made current."""

    status: AddStatus
    document: DocumentInfo


@dataclass(frozen=True)
class ChunkInfo(_Record):
    id: int
    ordinal: int
    text: str
    token_count: int
    start_char: int
    end_char: int
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DeleteResult(_Record):
    document: str
    namespace: str
    versions: int
    chunks: int
    adapters: int
    blobs_removed: int
