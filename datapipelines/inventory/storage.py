"""The inventory table, the engines behind it, and the per-job lock.

SQLite serialises writers with ``BEGIN IMMEDIATE``; PostgreSQL takes a
transaction-scoped advisory lock per (table, job), so acquisitions for
different jobs never wait on each other.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine

from .. import database
from ..database import database_url, show_url, sqlite_file
from ..errors import ConfigurationError

RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
STATUSES = (RUNNING, SUCCEEDED, FAILED)

DEFAULT_TABLE = "datapipelines_inventory"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")
# Passed as an execution option to open a plain (deferred) SQLite transaction for reads.
READ_ONLY = "datapipelines_read_only"


def inventory_table(name: str, schema: str | None = None) -> sa.Table:
    """The inventory table: one row per range of source items a job took."""
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("source_table", sa.String(255), nullable=False),
        sa.Column("job", sa.String(255), nullable=False),
        sa.Column("job_identifier", sa.String(255)),
        sa.Column("result", sa.JSON),
        sa.Column("processing_start", sa.DateTime, nullable=False),
        sa.Column("processing_end", sa.DateTime),
        sa.Column("lease_until", sa.DateTime, nullable=False),
        sa.Column("id_start", sa.BigInteger, nullable=False),
        sa.Column("id_end", sa.BigInteger, nullable=False),
        sa.Column("weight", sa.Float),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("backfill", sa.Boolean, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("log", sa.Text),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Index(f"ix_{name}_job_range", "job", "backfill", "id_end"),
        sa.Index(f"ix_{name}_job_status", "job", "status"),
        schema=schema,
    )


def create_engine(url: str | URL, *, immediate: bool) -> Engine:
    """An engine for ``url``; with ``immediate`` every SQLite transaction is BEGIN IMMEDIATE."""
    parsed = database_url(url)
    is_sqlite = parsed.get_backend_name() == "sqlite"
    kwargs: dict[str, Any] = {}
    if is_sqlite and "timeout" not in parsed.query:
        # Writers queue on the database lock; wait for them rather than fail.
        kwargs["connect_args"] = {"timeout": 60}
    engine = database.create_engine(parsed, "inventory database", **kwargs)
    if is_sqlite and immediate:
        _begin_immediate(engine)
    return engine


def _begin_immediate(engine: Engine) -> None:
    # pysqlite's own transaction handling would defer BEGIN; issue it ourselves.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def check_backend(engine: Engine) -> None:
    if engine.dialect.name not in SUPPORTED_BACKENDS:
        raise ConfigurationError(
            f"The inventory needs SQLite or PostgreSQL, not {engine.dialect.name} ({show_url(engine.url)}); "
            "a source table may live in any database SQLAlchemy reaches (Source(url=...))"
        )


def lock(connection: Connection, table: sa.Table, name: str) -> None:
    """Serialise transactions that use the same ``name`` until the transaction ends."""
    if connection.dialect.name != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE already holds the database's write lock.
    digest = hashlib.blake2b(f"{table.fullname}\0{name}".encode(), digest_size=8).digest()
    key = int.from_bytes(digest, "big", signed=True)
    connection.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def create_table(engine: Engine, table: sa.Table) -> None:
    """Create the inventory table if it is missing; safe when many processes start at once."""
    with engine.begin() as connection:
        lock(connection, table, "\0create")
        table.metadata.create_all(connection, checkfirst=True)


def table_exists(engine: Engine, table: sa.Table) -> bool:
    file = sqlite_file(engine.url)
    if file is not None and not file.exists():
        return False  # Asking SQLite would create the file.
    with engine.connect() as connection:
        connection.execution_options(**{READ_ONLY: True})
        return sa.inspect(connection).has_table(table.name, schema=table.schema)
