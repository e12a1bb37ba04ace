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


AddStatus = Literal["created", "new_version", "unchanged", "restored", "failed", "removed"]


@dataclass(frozen=True)
class AddResult(_Record):
    """What ``add`` did: a new document, a new version, nothing (same content), an old version made current,
    or (``add_source`` only) a file that failed alone, with its error, or (``prune_missing``) a document
    whose file is gone from its source and which was deleted (``source`` is then the document id)."""

    status: AddStatus
    document: DocumentInfo | None
    source: str | None = None  # the file path, for add_source
    error: str | None = None
    job: JobInfo | None = None  # the internalization the namespace's on_add policy submitted, if any


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


@dataclass(frozen=True)
class SearchHit(_Record):
    """A chunk found by classic retrieval (current versions only)."""

    chunk_id: int
    document_id: str
    version: int
    ordinal: int
    text: str
    score: float
    metadata: dict[str, Any] = field(default_factory=dict)  # document metadata + chunk metadata (page, section)


@dataclass(frozen=True)
class AdapterInfo(_Record):
    """A stored adapter and its provenance."""

    id: int
    namespace: str
    document_id: str | None
    version: int | None
    task_description: str | None
    method: str  # d2l | t2l | cd | self-study
    hypernetwork: str  # name@checkpoint-sha256 prefix
    base_model: str
    target_modules: list[str]
    rank: int
    chunk_count: int
    blob_sha256: str | None
    size_bytes: int | None
    latency_ms: float | None
    status: str
    error: str | None
    created_at: datetime
    tier: str = "instant"  # instant (d2l, cd, t2l: one pass or a few steps) | full (self-study)
    fidelity: dict[str, float] = field(default_factory=dict)  # measured on held-back probes (self-study)
    provenance: dict[str, Any] = field(default_factory=dict)  # how it was made: teacher, data counts and hash, ...
    synthetic_sha256: str | None = None  # the blob of the synthetic data it was trained on (self-study)


@dataclass(frozen=True)
class QueryResult(_Record):
    """An answer with how it was produced and why."""

    answer: str
    mode: str  # parametric | retrieval | hybrid | abstain (nothing stored is about the question)
    reason: str
    adapters: list[AdapterInfo]
    chunks: list[SearchHit]
    timings_ms: dict[str, float]  # search_ms, adapter_load_ms, generate_ms, total_ms
    query_id: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    confidence: float | None = None  # auto mode's checks of an adapted answer (see memory.router.check_answer)
    support: float | None = None
    # how much the best stored passage is about the question (memory.services.query.passage_relevance), when
    # measured; a query under the abstention threshold has mode "abstain" and says so in its answer and reason
    relevance: float | None = None


@dataclass(frozen=True)
class NamespaceInfo(_Record):
    """A namespace: its document count and what adding a document does in it (``on_add``)."""

    name: str
    documents: int
    on_add: str  # none | instant | full: the policy in force
    on_add_is_default: bool  # True: the namespace has no policy of its own and follows PMEM_ON_ADD
    created_at: datetime


@dataclass(frozen=True)
class JobInfo(_Record):
    id: int
    kind: str
    state: str
    attempts: int
    celery_id: str | None
    payload: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
