"""Scheduling columns: owner and heartbeat (crash recovery across workers), attempts, cancel flag.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nasprune_jobs") as t:
        t.add_column(sa.Column("owner", sa.String(128)))
        t.add_column(sa.Column("heartbeat_at", sa.DateTime()))
        t.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        t.add_column(sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()))
        t.add_column(sa.Column("updated_at", sa.DateTime()))


def downgrade() -> None:
    with op.batch_alter_table("nasprune_jobs") as t:
        for name in ("updated_at", "cancel_requested", "attempts", "heartbeat_at", "owner"):
            t.drop_column(name)
