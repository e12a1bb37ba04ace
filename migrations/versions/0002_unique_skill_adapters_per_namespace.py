"""unique skill adapters per namespace

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 18:43:51.488875
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.create_unique_constraint(
            batch_op.f("uq_adapters_namespace_id_task_sha256_hypernetwork_id"),
            ["namespace_id", "task_sha256", "hypernetwork_id"],
        )


def downgrade() -> None:
    with op.batch_alter_table("adapters", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_adapters_namespace_id_task_sha256_hypernetwork_id"), type_="unique")
