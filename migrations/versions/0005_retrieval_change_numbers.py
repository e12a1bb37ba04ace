"""retrieval: change numbers, so that an index re-reads only the documents changed since it last synced

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 06:00:00

- ``namespaces.index_seq``: +1 with every change of the namespace's documents (memory.db.stamps), in the
  same transaction; ``documents.index_seq``: the number of the last change of that document, with an index
  on ``(namespace_id, index_seq)``.
- ``namespaces.index_epoch``: a random token, new with the row and with every change that deletes a
  document; a process that synced under another one diffs every document (a deleted row has no number to
  be found by, and a namespace deleted and created again starts counting afresh).

Existing rows start at number 0 with a fresh token: the first sync of every process is a full diff anyway.
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("namespaces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("index_seq", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("index_epoch", sa.String(length=32), nullable=True))
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("index_seq", sa.Integer(), server_default="0", nullable=False))
        batch_op.create_index("ix_documents_namespace_id_index_seq", ["namespace_id", "index_seq"], unique=False)
    conn = op.get_bind()
    t = sa.table("namespaces", sa.column("id", sa.Integer), sa.column("index_epoch", sa.String))
    ids = [r[0] for r in conn.execute(sa.select(t.c.id))]
    if ids:
        conn.execute(
            t.update().where(t.c.id == sa.bindparam("rid")).values(index_epoch=sa.bindparam("epoch")),
            [{"rid": i, "epoch": uuid.uuid4().hex} for i in ids],
        )


def downgrade() -> None:
    with op.batch_alter_table("documents", schema=None) as batch_op:
        batch_op.drop_index("ix_documents_namespace_id_index_seq")
        batch_op.drop_column("index_seq")
    with op.batch_alter_table("namespaces", schema=None) as batch_op:
        batch_op.drop_column("index_epoch")
        batch_op.drop_column("index_seq")
