"""Namespaces and their settings: what exists, and what adding a document does in each (its ``on_add`` policy).

``on_add`` is ``none`` (adding stores the text; nothing is internalized until asked), ``instant`` (every added
or changed version gets the one-pass adapter at once) or ``full`` (both tiers, as a job). A namespace without
a policy of its own follows the ``PMEM_ON_ADD`` setting. Reading a policy never creates a namespace.

>>> check_on_add("instant")
'instant'
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memory.db import Document, Namespace
from memory.db.models import as_utc
from memory.errors import NotFoundError, ValidationError
from memory.services.records import Records
from memory.types import NamespaceInfo

ON_ADD = ("none", "instant", "full")
TIERS = ("instant", "full")  # what an internalization makes: the one-pass adapter, or both tiers


def check_on_add(value: str) -> str:
    """``value`` if it is an ``on_add`` policy, else a :class:`ValidationError` naming the choices."""
    if value not in ON_ADD:
        raise ValidationError(f"on_add must be one of {', '.join(ON_ADD)}, got {value!r}")
    return value


def check_tier(value: str) -> str:
    """``value`` if it is an internalization tier (``instant``, ``full``), else a :class:`ValidationError`."""
    if value not in TIERS:
        raise ValidationError(f"tier must be one of {', '.join(TIERS)}, got {value!r}")
    return value


class Namespaces:
    """Namespace rows and their policies.

    Args:
        records: the shared database.
        default_on_add: the policy of a namespace that has none of its own (``PMEM_ON_ADD``).
    """

    def __init__(self, records: Records, *, default_on_add: str) -> None:
        self.records = records
        self.default_on_add = check_on_add(default_on_add)

    def on_add(self, namespace: str | None = None) -> str:
        """The policy in force in ``namespace`` (its own, else the default; a missing namespace has the default)."""
        ns = self.records.namespace(namespace)
        with self.records.tx() as s:
            own = s.scalar(select(Namespace.on_add).where(Namespace.name == ns))
        return own or self.default_on_add

    def info(self, namespace: str | None = None) -> NamespaceInfo:
        """A namespace with its document count and policy; :class:`NotFoundError` when it does not exist."""
        ns = self.records.namespace(namespace)
        with self.records.tx() as s:
            row = s.scalar(select(Namespace).where(Namespace.name == ns))
            if row is None:
                raise NotFoundError(f"no namespace {ns!r}")
            count = s.scalar(select(func.count()).select_from(Document).where(Document.namespace_id == row.id)) or 0
            return NamespaceInfo(
                name=row.name,
                documents=count,
                on_add=row.on_add or self.default_on_add,
                on_add_is_default=row.on_add is None,
                created_at=as_utc(row.created_at),
            )

    def configure(self, namespace: str | None = None, *, on_add: str | None) -> NamespaceInfo:
        """Set the namespace's policy (``None``: follow the default again); creates the namespace if needed."""
        ns = self.records.namespace(namespace)
        if on_add is not None:
            check_on_add(on_add)

        def write(s: Session) -> None:
            row = self.records.namespace_row(s, ns, create=True)
            assert row is not None
            row.on_add = on_add

        self.records.retrying(write)
        return self.info(ns)
