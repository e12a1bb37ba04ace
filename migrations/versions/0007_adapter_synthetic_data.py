"""adapters: the blob of the synthetic data a self-study adapter was trained on

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 01:30:00

- ``adapters.synthetic_sha256``: the content-addressed blob (JSON) of the prompts and teacher responses a
  self-study adapter was trained on; kept so that a later Doc-to-LoRA meta-training can reuse it. It counts
  as a reference for blob garbage collection like ``blob_sha256``. NULL for every other method.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.add_column(sa.Column("synthetic_sha256", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_adapters_synthetic_sha256", ["synthetic_sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.drop_index("ix_adapters_synthetic_sha256")
        batch_op.drop_column("synthetic_sha256")
