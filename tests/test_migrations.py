"""Alembic: one head, upgrade/downgrade round trips, models == migrations, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from memory.db import get_engine, migrate
from memory.db.models import Base
from memory.errors import DatabaseNotInitialisedError


@pytest.fixture(params=["sqlite", "postgresql", "pgvector"])
def url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    if request.param == "pgvector":
        url = request.getfixturevalue("pgvector_url")
        migrate.downgrade(url, "base")
        return url
    return request.getfixturevalue("pg_url")


def test_single_head():
    heads = ScriptDirectory.from_config(migrate.alembic_config("sqlite://")).get_heads()
    assert len(heads) == 1
    assert migrate.head_revision() == heads[0]


def test_upgrade_downgrade_roundtrip_and_check(url):
    tables = set(Base.metadata.tables)
    migrate.upgrade(url)
    engine = get_engine(url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    assert tables <= set(inspect(engine).get_table_names())
    migrate.check(url)  # raises if the models and the migrations disagree
    migrate.downgrade(url, "base")
    assert migrate.current_revision(engine) is None
    assert not (tables & set(inspect(engine).get_table_names()))
    migrate.upgrade(url)
    migrate.check(url)
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_foreign_keys_exist_on_both_backends(url):
    migrate.upgrade(url)
    fks = inspect(get_engine(url)).get_foreign_keys("documents")
    assert {"document_versions", "namespaces", "sources"} <= {fk["referred_table"] for fk in fks}


def test_embedded_database_is_upgraded_on_first_use(tmp_path):
    from memory.api import ParametricMemory

    mem = ParametricMemory(home=tmp_path / "h")
    assert migrate.current_revision(mem.engine) == migrate.head_revision()


def test_server_database_is_never_migrated_implicitly(pg_url):
    from memory.api import ParametricMemory

    with pytest.raises(DatabaseNotInitialisedError, match="pmem db upgrade"):
        ParametricMemory(database_url=pg_url)
    assert inspect(get_engine(pg_url)).get_table_names() == []


def test_pgvector_table_only_where_the_extension_exists(url):
    migrate.upgrade(url)
    tables = set(inspect(get_engine(url)).get_table_names())
    assert ("chunk_vectors" in tables) == url.startswith("postgresql+psycopg://postgres@/")
    migrate.downgrade(url, "0002")
    assert "chunk_vectors" not in set(inspect(get_engine(url)).get_table_names())
