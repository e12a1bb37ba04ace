"""Alembic environment for parametric-memory (batch mode on SQLite, the models' naming convention)."""

from __future__ import annotations

from alembic import context

from memory.db.models import Base
from memory.db.session import get_engine

config = context.config
target_metadata = Base.metadata
# Tables that exist only on some databases and are kept out of the models on purpose (see 0004).
_OPTIONAL_TABLES = frozenset({"chunk_vectors"})


def include_name(name, type_, parent_names) -> bool:
    return not (type_ == "table" and name in _OPTIONAL_TABLES)


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is None:
        connectable = get_engine(config.get_main_option("sqlalchemy.url"))
    with connectable.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            include_name=include_name,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
