"""API keys of the memory server: hashed at rest, scoped to namespaces, with a role.

A key reads ``pmk_<key id>_<secret>``. The key id (12 hex characters) is stored as is and finds the row;
only the SHA-256 of the secret (32 random bytes) is stored, compared in constant time. The secret is
shown once, when the key is created, and never logged.

Roles are ordered: ``read`` (get, list, search, query) < ``write`` (also add, delete, rollback, internalize,
feedback) < ``admin`` (also server-side sources, refresh and maintenance). A key's namespaces are a list
of names or ``["*"]`` for all of them.

>>> store = KeyStore.for_url("sqlite:////tmp/pmem-keys-doc/pmem.db")  # doctest: +SKIP
>>> created = store.create("agent-1", role="write", namespaces=["hr"])  # doctest: +SKIP
>>> store.verify(created.secret).role  # doctest: +SKIP
'write'
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from memory.db import ApiKey, get_engine, session_factory, session_scope
from memory.db.models import as_utc
from memory.errors import NotFoundError, ValidationError

ROLES = ("read", "write", "admin")
ALL = "*"
_KEY = re.compile(r"^pmk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_LAST_USED_RESOLUTION = timedelta(seconds=60)  # last_used_at is written at most once a minute per key


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def role_allows(role: str, needed: str) -> bool:
    """Whether ``role`` includes ``needed`` (``admin`` > ``write`` > ``read``).

    >>> role_allows("write", "read"), role_allows("read", "write")
    (True, False)
    """
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key's id, name, role and namespaces (no secret)."""

    key_id: str
    name: str
    role: str
    namespaces: tuple[str, ...]

    def can(self, namespace: str, needed: str) -> bool:
        """Whether this caller may do a ``needed``-role operation in ``namespace``."""
        return (ALL in self.namespaces or namespace in self.namespaces) and role_allows(self.role, needed)

    def sees(self, namespace: str) -> bool:
        return ALL in self.namespaces or namespace in self.namespaces


#: The caller of a server started with ``--no-auth`` (allowed on a loopback address only).
LOCAL_ADMIN = Principal(key_id="local", name="local (no auth)", role="admin", namespaces=(ALL,))


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed: never its secret or the secret's hash."""

    key_id: str
    name: str
    role: str
    namespaces: list[str]
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "name": self.name,
            "role": self.role,
            "namespaces": list(self.namespaces),
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class CreatedKey:
    """A new key: ``secret`` is the full key string, shown to the user once."""

    info: KeyInfo
    secret: str

    def __repr__(self) -> str:
        return f"CreatedKey(info={self.info!r}, secret='pmk_{self.info.key_id}_…')"


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(
        key_id=row.key_id,
        name=row.name,
        role=row.role,
        namespaces=list(row.namespaces or []),
        created_at=as_utc(row.created_at),
        last_used_at=as_utc(row.last_used_at),
        revoked_at=as_utc(row.revoked_at),
    )


def _check_namespaces(namespaces: Any) -> list[str]:
    from memory.api import validate_namespace

    if isinstance(namespaces, str) or not namespaces:
        raise ValidationError("a key needs at least one namespace (or '*' for all), e.g. --namespace hr")
    names = sorted(set(namespaces))
    if ALL in names:
        if len(names) > 1:
            raise ValidationError("'*' already means every namespace; give it alone")
        return [ALL]
    return [validate_namespace(n) for n in names]


class KeyStore:
    """The ``api_keys`` table: create, verify, list and revoke keys."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    @classmethod
    def for_memory(cls, mem: Any) -> KeyStore:
        return cls(session_factory(mem.engine))

    @classmethod
    def for_url(cls, url: str) -> KeyStore:
        return cls(session_factory(get_engine(url)))

    def create(self, name: str, *, role: str, namespaces: list[str]) -> CreatedKey:
        """A new key; the returned ``secret`` is the only copy of it."""
        if not isinstance(name, str) or not name.strip() or len(name) > 128:
            raise ValidationError(f"a key name must be 1-128 characters, got {name!r}")
        if role not in ROLES:
            raise ValidationError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        scope = _check_namespaces(namespaces)
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        with session_scope(self._sessions) as s:
            row = ApiKey(key_id=key_id, secret_sha256=_digest(secret), name=name.strip(), role=role, namespaces=scope)
            s.add(row)
            s.flush()
            info = _info(row)
        return CreatedKey(info, f"pmk_{key_id}_{secret}")

    def verify(self, key: str) -> Principal | None:
        """The caller a key string belongs to, or ``None`` (malformed, unknown, wrong secret or revoked)."""
        m = _KEY.match(key or "")
        if m is None:
            return None
        key_id, secret = m.groups()
        with session_scope(self._sessions) as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
            if row is None or not hmac.compare_digest(row.secret_sha256, _digest(secret)):
                return None
            if row.revoked_at is not None:
                return None
            now = datetime.now(UTC)
            last = as_utc(row.last_used_at)
            if last is None or now - last > _LAST_USED_RESOLUTION:
                row.last_used_at = now
            return Principal(key_id=row.key_id, name=row.name, role=row.role, namespaces=tuple(row.namespaces or ()))

    def list(self, *, include_revoked: bool = False) -> list[KeyInfo]:
        with session_scope(self._sessions) as s:
            q = select(ApiKey).order_by(ApiKey.id)
            if not include_revoked:
                q = q.where(ApiKey.revoked_at.is_(None))
            return [_info(r) for r in s.scalars(q)]

    def revoke(self, key_id: str) -> KeyInfo:
        """Revoke a key by its id (the ``pmk_<id>_`` part); requests with it get 401 from then on."""
        if isinstance(key_id, str) and _KEY.match(key_id):
            key_id = _KEY.match(key_id).group(1)  # type: ignore[union-attr]  # the whole key was given
        with session_scope(self._sessions) as s:
            row = s.scalar(select(ApiKey).where(ApiKey.key_id == key_id))
            if row is None:
                raise NotFoundError(f"no API key with id {key_id!r} (see `pmem keys list`)")
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            s.flush()
            return _info(row)


def under_roots(path: str, roots: tuple[str, ...] | list[str]) -> str | None:
    """``path`` made absolute with every link resolved, if it lies under one of ``roots``; else ``None``.

    What a caller may reach on the server's disk (``pmem serve --source-root``, ``pmem mcp --file-root``):
    the check runs on the resolved path, so ``..`` and symbolic links cannot lead outside a root.

    >>> under_roots("/srv/docs/a/../b.md", ["/srv/docs"]), under_roots("/etc/passwd", ["/srv/docs"])
    ('/srv/docs/b.md', None)
    """
    import os

    if "\x00" in path:  # no file has such a name (and os.path refuses it)
        return None
    real_path = os.path.realpath(os.path.expanduser(path))
    for root in roots:
        real = os.path.realpath(os.path.expanduser(root))
        if real_path == real or real_path.startswith(real.rstrip(os.sep) + os.sep):
            return real_path
    return None


__all__ = [
    "ALL",
    "LOCAL_ADMIN",
    "ROLES",
    "CreatedKey",
    "KeyInfo",
    "KeyStore",
    "Principal",
    "role_allows",
    "under_roots",
]
