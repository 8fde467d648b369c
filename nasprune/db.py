"""Small database helpers shared by the job store and the trial storage."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@contextmanager
def advisory_lock(conn: Connection, key: int) -> Iterator[None]:
    """Hold PostgreSQL's session advisory lock ``key`` on ``conn`` (every nasprune process that creates
    a schema takes the same one first); on any other database, do nothing."""
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
    conn.commit()
    try:
        yield
    finally:
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.commit()
