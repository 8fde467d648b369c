"""The jobs table: spec, status, progress, result, errors, MLflow run, timestamps.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "nasprune_jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("progress", sa.Text()),
        sa.Column("result", sa.Text()),
        sa.Column("error", sa.Text()),
        sa.Column("tracking_error", sa.Text()),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("mlflow_run_url", sa.Text()),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime()),
        sa.Column("finished_at", sa.DateTime()),
    )
    op.create_index("ix_nasprune_jobs_status_created", "nasprune_jobs", ["status", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_nasprune_jobs_status_created", table_name="nasprune_jobs")
    op.drop_table("nasprune_jobs")
