"""Engines and sessions: one engine per URL per process, SQLite tuned for concurrent writers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def normalise_url(url: str) -> str:
    """Use psycopg 3 for ``postgresql://`` URLs (SQLAlchemy's default driver would be psycopg2)."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def get_engine(url: str) -> Engine:
    """Return the process-wide engine for ``url``, creating it (and a SQLite file's directory) on first use.

    >>> get_engine("sqlite://").dialect.name
    'sqlite'
    """
    url = normalise_url(url)
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _create(url)
            _engines[url] = engine
        return engine


def _create(url: str) -> Engine:
    u = make_url(url)
    if u.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)
    if u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:
        # Let SQLAlchemy emit BEGIN itself so that BEGIN IMMEDIATE below takes the write lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        if u.database and u.database != ":memory:":
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        # Writers serialise at BEGIN instead of failing with "database is locked" at the first write;
        # two processes adding the same content therefore see each other's committed rows.
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


# One key for every process: writers of blob references share it, sweepers of blobs take it alone.
_BLOB_LOCK_KEY = 0x706D656D626C6F62  # b"pmemblob"


def lock_blobs(session: Session, *, exclusive: bool = False) -> None:
    """Hold the database's blob lock until ``session``'s transaction ends.

    A writer takes it (shared) before it re-checks that its blob exists and commits the row that
    references it; a sweeper takes it (exclusive) around "which blobs are unreferenced?" and their
    deletion. Either the sweep sees the new reference, or the writer sees the blob gone and writes it
    again, so no committed row ever points at a swept blob. On PostgreSQL this is a transaction-level
    advisory lock; on SQLite every transaction already holds the write lock (``BEGIN IMMEDIATE``).
    """
    conn = session.connection()  # begins the transaction: on SQLite that is BEGIN IMMEDIATE, the lock
    if conn.dialect.name == "postgresql":
        fn = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        session.execute(text(f"SELECT {fn}(:key)"), {"key": _BLOB_LOCK_KEY})


def dispose_engines() -> None:
    """Close every pooled connection (tests, forked workers)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False, future=True)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
