"""The database and the blob store every service shares: transactions, retries, lookups, unreferenced blobs.

A service gets one :class:`Records` and never opens an engine of its own. Lookups validate what they are
given first (:func:`validate_namespace`, :func:`validate_document_id`), so a bad name fails with a message
before any SQL runs.

>>> validate_namespace("team-a")
'team-a'
>>> validate_document_id("docs/../etc")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
memory.errors.ValidationError: invalid document id 'docs/../etc': ... no empty, '.' or '..' path segments
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from memory.db import Adapter, Document, DocumentVersion, Namespace, lock_blobs, session_scope
from memory.errors import ConflictError, NotFoundError, ValidationError
from memory.names import validate_document_id, validate_namespace  # light: the HTTP client checks names too
from memory.storage import BlobStore

log = logging.getLogger(__name__)
T = TypeVar("T")

_MAX_METADATA_BYTES = 64 * 1024
#: The largest id, version number, row offset or count a caller may name: PostgreSQL's ``integer`` (every id
#: and version column; SQLite's are wider). A larger number is an input error, never a database error.
MAX_INT = 2**31 - 1
RETRIES = 5  # attempts of a write that lost a unique-key race or found a stale row


def validate_metadata(metadata: Any) -> dict[str, Any]:
    """Metadata is a JSON object: string keys; values str, finite numbers, bools, None, lists and objects.

    NaN and infinities are refused (JSON has no such numbers, and one such value breaks filtering and
    search for its whole namespace), and so is anything JSON cannot represent exactly.
    """
    if not isinstance(metadata, dict):
        raise ValidationError(f"metadata must be a dict, got {type(metadata).__name__}")

    def check(value: Any, where: str) -> None:
        if isinstance(value, str):
            check_text_field(f"metadata {where or 'value'}", value)
            return
        if value is None or isinstance(value, (bool, int)):
            return
        if isinstance(value, float):
            if not math.isfinite(value):
                raise ValidationError(f"metadata {where} is {value!r}: only finite numbers can be stored")
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                check(item, f"{where}[{i}]")
            return
        if isinstance(value, dict):
            for k, item in value.items():
                if not isinstance(k, str):
                    raise ValidationError(f"metadata {where} has a non-string key {k!r}: JSON keys are strings")
                check_text_field(f"metadata key {k[:40]!r}", k)
                check(item, f"{where}.{k}" if where else k)
            return
        raise ValidationError(
            f"metadata {where or 'value'} is a {type(value).__name__}, which JSON cannot hold: use str, "
            "numbers, bools, None, lists and dicts"
        )

    check(metadata, "")
    size = len(json.dumps(metadata, allow_nan=False))
    if size > _MAX_METADATA_BYTES:
        raise ValidationError(f"metadata is {size:,} bytes as JSON, over the limit of {_MAX_METADATA_BYTES:,}")
    return metadata


def check_text_field(name: str, value: str) -> str:
    """``value`` if it holds no NUL character, else a :class:`ValidationError` naming ``name``.

    PostgreSQL's ``text`` and ``jsonb`` cannot hold NUL, so one refused there and stored by SQLite would make
    the same data valid on one backend and not the other (and a NUL in stored metadata would break every
    filtered search of its namespace): it is refused everywhere, before any SQL runs.

    >>> check_text_field("title", "ok")
    'ok'
    """
    if "\x00" in value:
        raise ValidationError(f"{name} contains a NUL character (\\x00), which cannot be stored; remove it")
    return value


def check_int(name: str, value: Any, *, low: int = 1) -> int:
    """``value`` if it is an integer from ``low`` to :data:`MAX_INT`, else a :class:`ValidationError` naming ``name``.

    >>> check_int("offset", 0, low=0)
    0
    """
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= MAX_INT:
        raise ValidationError(f"{name} must be an integer from {low} to {MAX_INT:,}, got {value!r}")
    return value


def check_count(name: str, value: Any, limit: int) -> int:
    """``value`` if it is an integer from 1 to ``limit``, else a :class:`ValidationError` naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise ValidationError(f"{name} must be an integer from 1 to {limit}, got {value!r}")
    return value


class Records:
    """Sessions on one database, the blob store its rows reference, and the default namespace.

    Args:
        engine: the SQLAlchemy engine (already migrated).
        sessions: a session factory bound to ``engine``.
        blobs: the content-addressed store of document texts and adapter weights.
        default_namespace: the namespace used when a call names none.
    """

    def __init__(
        self, engine: Engine, sessions: sessionmaker[Session], blobs: BlobStore, default_namespace: str
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.blobs = blobs
        self.default_namespace = default_namespace

    def tx(self) -> AbstractContextManager[Session]:
        """A transaction (commit on success, roll back on error)."""
        return session_scope(self.sessions)

    def retrying(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a transaction; on a unique-key race or a stale row, start again from a fresh read."""
        for attempt in range(RETRIES):
            try:
                with self.tx() as s:
                    return fn(s)
            except (sa_exc.IntegrityError, StaleDataError, sa_exc.OperationalError) as e:
                if isinstance(e, sa_exc.OperationalError) and "lock" not in str(e).lower():
                    raise
                if attempt == RETRIES - 1:
                    raise ConflictError(f"gave up after {RETRIES} concurrent-update retries: {e}") from e
                log.debug("retrying after a concurrent update: %s", e)
                time.sleep(0.02 * (attempt + 1))
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ lookups
    def namespace(self, name: str | None) -> str:
        """``name`` validated, or the default namespace."""
        return validate_namespace(name if name is not None else self.default_namespace)

    @staticmethod
    def namespace_row(s: Session, name: str, create: bool) -> Namespace | None:
        row = s.scalar(select(Namespace).where(Namespace.name == name))
        if row is None and create:
            row = Namespace(name=name)
            s.add(row)
            s.flush()
        return row

    @staticmethod
    def document(s: Session, namespace: str, doc_id: str) -> Document:
        validate_document_id(doc_id)
        doc = s.scalar(
            select(Document)
            .join(Namespace, Document.namespace_id == Namespace.id)
            .where(Namespace.name == namespace, Document.key == doc_id)
        )
        if doc is None:
            raise NotFoundError(f"no document {doc_id!r} in namespace {namespace!r}")
        return doc

    @staticmethod
    def version(s: Session, doc: Document, number: int | None) -> DocumentVersion:
        """Version ``number`` of ``doc`` (its current one for ``None``)."""
        if number is None:
            if doc.current_version_id is None:
                raise NotFoundError(f"document {doc.key!r} has no current version")
            v = s.get(DocumentVersion, doc.current_version_id)
        else:
            check_int("version", number)
            v = s.scalar(
                select(DocumentVersion).where(DocumentVersion.document_id == doc.id, DocumentVersion.number == number)
            )
        if v is None:
            raise NotFoundError(f"document {doc.key!r} has no version {number}")
        return v

    # ------------------------------------------------------------ blobs
    def hold_blob(self, s: Session, sha: str, data: bytes) -> None:
        """Under the blob lock, make sure the blob this transaction is about to reference exists.

        A concurrent ``gc``/``delete`` may have swept it since our ``put`` (it was unreferenced then);
        the lock keeps it from doing so again before this transaction commits.
        """
        lock_blobs(s)
        if not self.blobs.exists(sha):
            log.info("blob %s was swept before its row committed: writing it again", sha)
            self.blobs.put(data)

    @staticmethod
    def referenced(s: Session, shas: list[str] | None = None) -> set[str]:
        """The blobs among ``shas`` (all, for ``None``) that some row references (texts, adapter weights, the
        synthetic data of self-study adapters)."""
        texts = select(DocumentVersion.content_sha256)
        weights = select(Adapter.blob_sha256)
        synthetic = select(Adapter.synthetic_sha256)  # self-study's training data
        if shas is not None:
            if not shas:
                return set()
            texts = texts.where(DocumentVersion.content_sha256.in_(shas))
            weights = weights.where(Adapter.blob_sha256.in_(shas))
            synthetic = synthetic.where(Adapter.synthetic_sha256.in_(shas))
        return set(s.scalars(texts)) | {b for b in s.scalars(weights) if b} | {b for b in s.scalars(synthetic) if b}

    def drop_unreferenced(self, shas: list[str]) -> int:
        """Delete those of ``shas`` that no row references any more (content is shared across documents)."""
        if not shas:
            return 0
        with self.tx() as s:
            lock_blobs(s, exclusive=True)  # no writer commits a reference to these while we look and delete
            used = self.referenced(s, shas)
            return sum(self.blobs.delete(sha) for sha in set(shas) - used)

    def gc(self, *, dry_run: bool = False) -> list[str]:
        """Remove every blob that no row references (left by a crash between blob write and commit).

        Safe while other processes write: candidates are re-checked and deleted under the exclusive blob
        lock, and temporary files of writes in flight are left alone (see ``BlobStore.sweep``).
        """
        with self.tx() as s:
            referenced = self.referenced(s)
        candidates = self.blobs.sweep(referenced, dry_run=True)
        if dry_run:
            return candidates
        removed: list[str] = []
        if candidates:
            with self.tx() as s:
                lock_blobs(s, exclusive=True)
                used = self.referenced(s, candidates)
                removed = [d for d in candidates if d not in used and self.blobs.delete(d)]
        self.blobs.sweep_temporaries()
        if removed:
            log.info("gc removed %d unreferenced blob(s)", len(removed))
        return removed
