"""Fixtures for the inventory tests: SQLite and PostgreSQL databases holding item tables.

PostgreSQL runs in a schema of its own per test, dropped afterwards; its URL
comes from env DATAPIPELINES_TEST_POSTGRES. This module holds no tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from datapipelines.inventory import Inventory, Source
from tests.support.clock import FakeClock
from tests.support.postgres import POSTGRES_URL, require_postgres

BACKENDS = ["sqlite", "postgresql"]
START = datetime(2030, 1, 1, tzinfo=timezone.utc)


class Database:
    """One test's database: ``url``, and ``schema`` on PostgreSQL (None on SQLite)."""

    def __init__(self, kind: str, url: str, schema: str | None) -> None:
        self.kind = kind
        self.url = url
        self.schema = schema
        self.engine = sa.create_engine(url)
        self.opened: list[Inventory] = []

    def items(
        self,
        name: str = "items",
        ids: range | list[int] = range(10),
        weight: Callable[[int], Any] | None = lambda i: 2 * i,
        extra: Callable[[int], dict[str, Any]] | None = None,
    ) -> sa.Table:
        """Create table ``name`` with an auto-increment id, a weight column, a tag, and rows for ``ids``."""
        table = sa.Table(
            name,
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("weight", sa.Integer),
            sa.Column("tag", sa.String(20)),
            schema=self.schema,
        )
        with self.engine.begin() as connection:
            table.create(connection)
        self.add(table, ids, weight, extra)
        return table

    def add(
        self,
        table: sa.Table,
        ids: range | list[int],
        weight: Callable[[int], Any] | None = lambda i: 2 * i,
        extra: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        rows = [
            {"id": i, "weight": None if weight is None else weight(i), "tag": "even" if i % 2 == 0 else "odd"}
            | (extra(i) if extra else {})
            for i in ids
        ]
        if rows:
            with self.engine.begin() as connection:
                connection.execute(table.insert(), rows)

    def source(self, table: str = "items", **kwargs: Any) -> Source:
        kwargs.setdefault("weight_column", "weight")
        return Source(table, schema=self.schema, **kwargs)

    def inventory(self, **kwargs: Any) -> Inventory:
        kwargs.setdefault("source", self.source())
        inventory = Inventory(self.url, schema=self.schema, **kwargs)
        self.opened.append(inventory)
        return inventory

    def close(self) -> None:
        for inventory in self.opened:
            inventory.close()
        self.engine.dispose()


def make_database(kind: str, tmp_path: Any) -> Iterator[Database]:
    if kind == "sqlite":
        database = Database(kind, f"sqlite:///{tmp_path / 'inventory.sqlite3'}", None)
        yield database
        database.close()
        return
    require_postgres()
    schema = f"dp_inventory_{uuid.uuid4().hex[:10]}"
    database = Database(kind, POSTGRES_URL, schema)
    with database.engine.begin() as connection:
        connection.execute(sa.schema.CreateSchema(schema))
    try:
        yield database
    finally:
        for inventory in database.opened:
            inventory.close()
        with database.engine.begin() as connection:
            connection.execute(sa.schema.DropSchema(schema, cascade=True))
        database.close()


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Database]:
    """A fresh database on each backend."""
    yield from make_database(request.param, tmp_path)


@pytest.fixture
def sqlite_db(tmp_path: Any) -> Iterator[Database]:
    yield from make_database("sqlite", tmp_path)


@pytest.fixture
def postgres_db(tmp_path: Any) -> Iterator[Database]:
    yield from make_database("postgresql", tmp_path)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)
