"""The database layer shared by the catalogue, the local state and the key-value store.

SQLAlchemy Core on SQLite (embedded, one file to sync) or PostgreSQL (several
machines). Datetimes are stored as naive UTC and handed back aware, so both
backends compare them the same way.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    inspect,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import URL, Connection

from datapipelines import database
from datapipelines.database import UTC, create_engine, database_url, naive_utc, show_url
from datapipelines.errors import DataPipelinesError

from .content import canonical_json

PAGE_SIZE = 1000
FieldsType = JSON().with_variant(JSONB(), "postgresql")

# The columns a consumer copies from the catalogue, in this order.
REMOTE_COLUMNS = (
    "key", "type", "query", "size", "sha256", "source", "retrieved_at", "last_updated", "fields",
)  # fmt: skip
DATE_COLUMNS = frozenset({"retrieved_at", "last_updated", "local_updated", "deleted_at"})


class CatalogError(DataPipelinesError, ValueError):
    """Bad input to a catalogue, a local state or their key-value store."""


def to_db(value: datetime.datetime) -> datetime.datetime:
    """Naive UTC for storage; a naive input is taken to be UTC already."""
    if not isinstance(value, datetime.datetime):
        raise CatalogError(f"expected a datetime, got {type(value).__name__} ({value!r})")
    return naive_utc(value)


def from_db(value: datetime.datetime | None) -> datetime.datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


def engine_for(url: str, what: str = "catalogue") -> Engine:
    """An engine for a SQLite or PostgreSQL URL; a bare path means a SQLite file.

    ``postgresql://`` and ``postgres://`` use the psycopg 3 driver. Database
    errors name ``what`` and the URL (see ``datapipelines.database``).
    """
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise CatalogError(
            f"Catalogue URLs are sqlite:///path or postgresql://...; got {backend}:// in {show_url(parsed)!r}"
        )
    file = database.sqlite_file(parsed)
    if file is not None:
        folder = file.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CatalogError(f"Cannot create the folder of the {what} {str(folder)!r}: {error}") from error
    return create_engine(parsed, what, CatalogError, json_serializer=canonical_json)


def parse_url(url: str) -> URL:
    """A catalogue URL parsed; a bare path means a SQLite file."""
    return database_url(url if "://" in url else f"sqlite:///{url}", CatalogError)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (or bare path); None for PostgreSQL or an in-memory database."""
    return database.sqlite_file(parse_url(url))


def record_table(metadata: MetaData, name: str, *, local: bool) -> Table:
    """The catalogue's table, or (``local=True``) a consumer's copy with its own state."""
    columns: list[Any] = [
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("key", Text, nullable=False, unique=True),
        Column("type", Text, nullable=False, index=True),
        Column("query", FieldsType, nullable=False),
        Column("size", BigInteger, nullable=False),
        Column("sha256", String(64), nullable=False),
        Column("source", Text, nullable=True),
        Column("retrieved_at", DateTime, nullable=False, index=True),
        Column("last_updated", DateTime, nullable=False),
        Column("fields", FieldsType, nullable=False),
    ]
    if local:
        columns += [
            Column("local", FieldsType, nullable=False),
            Column("local_updated", DateTime, nullable=True),
        ]
    # Soft deletion: the catalogue's own (a file that vanished) and a consumer's.
    columns += [
        Column("deleted_at", DateTime, nullable=True, index=True),
        Column("deleted_reason", Text, nullable=True),
    ]
    return Table(name, metadata, *columns)


def changes_table(metadata: MetaData, name: str) -> Table:
    """The append-only log of what changed, one row per record and change (see ``changes``)."""
    return Table(
        name,
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("key", Text, nullable=False, index=True),
        Column("type", Text, nullable=False),
        Column("changed_at", DateTime, nullable=False, index=True),
        Column("action", String(16), nullable=False),
        Column("columns", FieldsType, nullable=False),
        Column("fields", FieldsType, nullable=False),
    )


def create_tables(engine: Engine, metadata: MetaData) -> None:
    """Create missing tables, and add the nullable columns a table made by an older version lacks."""
    metadata.create_all(engine)
    with engine.begin() as connection:
        inspector = inspect(connection)
        for table in metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present and column.nullable:
                    kind = column.type.compile(dialect=connection.dialect)
                    connection.execute(text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))
            for index in table.indexes:
                index.create(connection, checkfirst=True)


def store_table(metadata: MetaData, name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("key", Text, primary_key=True),
        Column("kind", String(16), nullable=False),
        Column("value", Text, nullable=True),
        Column("updated_at", DateTime, nullable=False),
    )


def upsert(connection: Connection, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows, or update the row with the same ``key``, in one statement."""
    if not rows:
        return
    insert = sqlite_insert if connection.dialect.name == "sqlite" else postgresql_insert
    statement = insert(table)
    columns = [name for name in rows[0] if name not in ("id", "key")]
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.key], set_={name: statement.excluded[name] for name in columns}
    )
    connection.execute(statement, list(rows))


def pages(
    engine: Engine, statement: Select[Any], id_column: Any, size: int = PAGE_SIZE
) -> Iterator[Sequence[Any]]:
    """Rows of ``statement`` in id order, one short-lived connection per page.

    No connection stays open between pages, so a caller may write to the same
    SQLite file while it iterates.
    """
    last = None
    while True:
        page_statement = statement.order_by(id_column).limit(size)
        if last is not None:
            page_statement = page_statement.where(id_column > last)
        with engine.connect() as connection:
            rows = connection.execute(page_statement).all()
        if not rows:
            return
        yield rows
        last = rows[-1].id
        if len(rows) < size:
            return
