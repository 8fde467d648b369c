"""Versioned schema of the job store (Alembic scripts, run programmatically by ``JobStore.migrate``)."""
