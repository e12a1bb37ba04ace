"""retrieval: change markers (index stamps), and pgvector embeddings where the extension exists

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 02:50:00

- ``namespaces.index_stamp`` / ``documents.index_stamp``: random tokens renewed in the same transaction
  as every change of a document (memory.db.stamps); existing rows get one now.
- an index on ``documents.current_version_id`` (every search joins on it).
- On PostgreSQL with the ``vector`` extension available: the side table ``chunk_vectors`` (one embedding
  per chunk, ``vector`` column, model name and dimension) with an HNSW cosine index for 384-d vectors
  (all-MiniLM-L6-v2, the embedded default). Without the extension this part does nothing, and retrieval
  stays in-process. To add it later: ``CREATE EXTENSION vector``, then run the statements of
  PGVECTOR_DDL below (or downgrade below this revision and upgrade again).
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Also used by memory.retrieval.pgvector to check what exists; keep the names in step.
PGVECTOR_DDL = (
    (
        "CREATE TABLE IF NOT EXISTS chunk_vectors ("
        " chunk_id INTEGER PRIMARY KEY REFERENCES chunks (id) ON DELETE CASCADE,"
        " model VARCHAR(128) NOT NULL,"
        " dim INTEGER NOT NULL,"
        " embedding vector NOT NULL)"
    ),
    (
        "CREATE INDEX IF NOT EXISTS ix_chunk_vectors_hnsw_384 ON chunk_vectors"
        " USING hnsw ((embedding::vector(384)) vector_cosine_ops) WHERE dim = 384"
    ),
)


def _stamp_all(table: str) -> None:
    conn = op.get_bind()
    t = sa.table(table, sa.column("id", sa.Integer), sa.column("index_stamp", sa.String))
    ids = [r[0] for r in conn.execute(sa.select(t.c.id))]
    if ids:
        conn.execute(
            t.update().where(t.c.id == sa.bindparam("rid")).values(index_stamp=sa.bindparam("stamp")),
            [{"rid": i, "stamp": uuid.uuid4().hex} for i in ids],
        )


def _pgvector_available() -> bool:
    conn = op.get_bind()
    if conn.dialect.name != "postgresql":
        return False
    if conn.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'vector'")).first():
        return True
    if not conn.execute(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first():
        return False
    try:
        with conn.begin_nested():  # a failed CREATE EXTENSION (no privilege) must not abort the migration
            conn.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sa.exc.DBAPIError:
        return False
    return True


def upgrade() -> None:
    with op.batch_alter_table("namespaces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("index_stamp", sa.String(length=32), nullable=True))
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("index_stamp", sa.String(length=32), nullable=True))
        # every search joins documents on their current version
        batch_op.create_index(batch_op.f("ix_documents_current_version_id"), ["current_version_id"], unique=False)
    _stamp_all("namespaces")
    _stamp_all("documents")
    if _pgvector_available():
        for statement in PGVECTOR_DDL:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TABLE IF EXISTS chunk_vectors")
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_documents_current_version_id"))
        batch_op.drop_column("index_stamp")
    with op.batch_alter_table("namespaces", schema=None) as batch_op:
        batch_op.drop_column("index_stamp")
