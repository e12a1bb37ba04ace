"""namespaces: an internalization policy per namespace

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 01:30:00

- ``namespaces.on_add``: what adding a document (or a new version of one) does in this namespace: ``none``
  (nothing), ``instant`` (the one-pass adapter) or ``full`` (both tiers); NULL follows ``PMEM_ON_ADD``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("namespaces", schema=None) as batch_op:
        batch_op.add_column(sa.Column("on_add", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("namespaces", schema=None) as batch_op:
        batch_op.drop_column("on_add")
