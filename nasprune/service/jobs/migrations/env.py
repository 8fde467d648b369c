"""Alembic environment: runs on the connection ``JobStore.migrate`` hands over (no alembic.ini, no URL here)."""

from alembic import context

from nasprune.service.jobs.store import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
