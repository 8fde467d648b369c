"""Users, API keys (hashes only), who owns what, the audit trail; each job's user.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nasprune_users",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("team", sa.String(64)),
        sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("max_running", sa.Integer()),
        sa.Column("max_queued", sa.Integer()),
        sa.Column("max_storage_bytes", sa.BigInteger()),
        sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "nasprune_api_keys",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("user_name", sa.String(64), sa.ForeignKey("nasprune_users.name"), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("label", sa.String(128)),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime()),
        sa.Column("last_used_at", sa.DateTime()),
    )
    op.create_table(
        "nasprune_resources",
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("user_name", sa.String(64), primary_key=True),
        sa.Column("team", sa.String(64)),
        sa.Column("n_bytes", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_nasprune_resources_user", "nasprune_resources", ["user_name", "kind"])
    op.create_table(
        "nasprune_audit",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("user_name", sa.String(64)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("target", sa.String(160)),
        sa.Column("detail", sa.Text()),
    )
    op.create_index("ix_nasprune_audit_at", "nasprune_audit", ["at"])
    with op.batch_alter_table("nasprune_jobs") as t:
        t.add_column(sa.Column("user_name", sa.String(64)))
        t.add_column(sa.Column("team", sa.String(64)))
    op.create_index("ix_nasprune_jobs_user_status", "nasprune_jobs", ["user_name", "status"])


def downgrade() -> None:
    op.drop_index("ix_nasprune_jobs_user_status", table_name="nasprune_jobs")
    with op.batch_alter_table("nasprune_jobs") as t:
        t.drop_column("team")
        t.drop_column("user_name")
    op.drop_index("ix_nasprune_audit_at", table_name="nasprune_audit")
    op.drop_table("nasprune_audit")
    op.drop_index("ix_nasprune_resources_user", table_name="nasprune_resources")
    op.drop_table("nasprune_resources")
    op.drop_table("nasprune_api_keys")
    op.drop_table("nasprune_users")
