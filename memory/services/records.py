"""The database and the blob store every service shares: transactions, retries, lookups, unreferenced blobs.

A service gets one :class:`Records` and never opens an engine of its own. Lookups validate what they are
given first (:func:`validate_namespace`, :func:`validate_document_id`), so a bad name fails with a message
before any SQL runs.

>>> validate_namespace("team-a")
'team-a'
>>> validate_document_id("docs/../etc")
Traceback (most recent call last):
...
memory.errors.ValidationError: invalid document id 'docs/../etc': use 1-255 characters of letters, digits and _ . : @ / + = -, no empty, '.' or '..' path segments
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from memory.db import Adapter, Document, DocumentVersion, Namespace, session_scope
from memory.errors import ConflictError, NotFoundError, ValidationError
from memory.storage import BlobStore

log = logging.getLogger(__name__)
T = TypeVar("T")

_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_DOC_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@/+=-]{0,254}$")
RETRIES = 5  # attempts of a write that lost a unique-key race or found a stale row


def validate_namespace(name: str) -> str:
    """Namespaces are 1-64 characters of ``a-z 0-9 _ -``, starting with a letter or digit."""
    if not isinstance(name, str) or not _NAMESPACE.match(name):
        raise ValidationError(
            f"invalid namespace {name!r}: use 1-64 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
        )
    return name


def validate_document_id(doc_id: str) -> str:
    """Document ids are 1-255 printable characters ``A-Z a-z 0-9 _ . : @ / + = -`` without ``..`` segments."""
    if (
        not isinstance(doc_id, str)
        or not _DOC_ID.match(doc_id)
        or any(part in ("", ".", "..") for part in doc_id.split("/"))
    ):
        raise ValidationError(
            f"invalid document id {doc_id!r}: use 1-255 characters of letters, digits and _ . : @ / + = -, "
            "no empty, '.' or '..' path segments"
        )
    return doc_id


class Records:
    """Sessions on one database, the blob store its rows reference, and the default namespace.

    Args:
        engine: the SQLAlchemy engine (already migrated).
        sessions: a session factory bound to ``engine``.
        blobs: the content-addressed store of document texts and adapter weights.
        default_namespace: the namespace used when a call names none.
    """

    def __init__(self, engine: Engine, sessions: sessionmaker[Session], blobs: BlobStore,
                 default_namespace: str) -> None:
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
            if not isinstance(number, int) or isinstance(number, bool) or number < 1:
                raise ValidationError(f"version must be a positive integer, got {number!r}")
            v = s.scalar(select(DocumentVersion).where(DocumentVersion.document_id == doc.id,
                                                       DocumentVersion.number == number))
        if v is None:
            raise NotFoundError(f"document {doc.key!r} has no version {number}")
        return v

    # ------------------------------------------------------------ blobs
    def referenced(self) -> set[str]:
        """Every blob some row references (document texts and adapter weights)."""
        with self.tx() as s:
            used = set(s.scalars(select(DocumentVersion.content_sha256)))
            used |= {b for b in s.scalars(select(Adapter.blob_sha256)) if b}
        return used

    def drop_unreferenced(self, shas: list[str]) -> int:
        """Delete those of ``shas`` that no row references any more (content is shared across documents)."""
        if not shas:
            return 0
        with self.tx() as s:
            used = set(s.scalars(select(DocumentVersion.content_sha256)
                                 .where(DocumentVersion.content_sha256.in_(shas))))
            used |= set(s.scalars(select(Adapter.blob_sha256).where(Adapter.blob_sha256.in_(shas))))
        return sum(self.blobs.delete(sha) for sha in set(shas) - used)
