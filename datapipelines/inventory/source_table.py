"""The table a job takes its items from, and how ranges of it are picked.

A source table needs an integer id that only grows (auto-increment) and may
have a weight column; an item without a weight column weighs 1, a NULL weight 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Union

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import ClauseElement, ColumnElement

from ..errors import ConfigurationError

# A filter on a source table: {column: value or list of values}, a SQLAlchemy
# expression (sa.column("status") == "ok"), or a function of the reflected Table.
Where = Union[Mapping[str, Any], ColumnElement[Any], Callable[[sa.Table], ColumnElement[Any]]]


@dataclass(frozen=True)
class Source:
    """Where a job's items live.

    ``url`` is ``None`` when the table is in the inventory's own database (it is
    then read in the same transaction). ``where`` keeps only matching items.
    ``pending`` marks items that are not final yet: a range ends before the first
    of them, so they are offered once they stop being pending (and, if they then
    match ``where``, processed).
    """

    table: str
    id_column: str = "id"
    weight_column: str | None = None
    url: str | None = field(default=None, repr=False)
    schema: str | None = None
    where: Where | None = field(default=None, compare=False)
    pending: Where | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """The name a job's progress is kept under in the inventory's ``source_table`` column."""
        return f"{self.schema}.{self.table}" if self.schema else self.table


def as_source(value: Source | str) -> Source:
    if isinstance(value, Source):
        return value
    if isinstance(value, str) and value:
        return Source(value)
    raise ConfigurationError(f"A source is a Source(...) or a table name, not {value!r}")


def column_of(table: sa.Table, name: str, role: str) -> sa.Column[Any]:
    try:
        return table.c[name]
    except KeyError:
        raise ConfigurationError(
            f"Table {table.fullname!r} has no {role} column {name!r}; it has {', '.join(table.c.keys())}"
        ) from None


def resolve(table: sa.Table, where: Where | None) -> ColumnElement[Any] | None:
    """``where`` as a SQLAlchemy condition on ``table`` (None when there is no filter)."""
    if where is None:
        return None
    if isinstance(where, ClauseElement):
        return where  # type: ignore[return-value]
    if isinstance(where, Mapping):
        parts = []
        for name, value in where.items():
            column = column_of(table, name, "filter")
            if value is None:
                parts.append(column.is_(None))
            elif isinstance(value, (list, tuple, set, frozenset)):
                parts.append(column.in_(list(value)))
            else:
                parts.append(column == value)
        return sa.and_(*parts) if parts else None
    if callable(where):
        clause = where(table)
        if not isinstance(clause, ClauseElement):
            raise ConfigurationError(f"Filter function {where!r} returned {clause!r}, not a SQL expression")
        return clause
    raise ConfigurationError(
        f"A filter is a mapping of column to value, a SQLAlchemy expression or a function of the table, "
        f"not {type(where).__name__}: {where!r}"
    )


def both(first: ColumnElement[Any] | None, second: ColumnElement[Any] | None) -> ColumnElement[Any] | None:
    if first is None or second is None:
        return first if second is None else second
    return sa.and_(first, second)


def describe(clause: ColumnElement[Any] | None, dialect: sa.Dialect) -> str | None:
    """The SQL of ``clause`` with its values inlined, for the config column and the CLI."""
    if clause is None:
        return None
    try:
        return str(clause.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    except Exception:  # a value without a literal form: show the placeholders instead
        return str(clause.compile(dialect=dialect))


@dataclass(frozen=True)
class Pick:
    """Items found for a new range: the first and last id, how many, their summed weight."""

    first: Any
    last: Any
    count: int
    weight: Any


@dataclass
class BoundSource:
    """A Source resolved against its reflected table; ``engine`` None means the inventory's database."""

    source: Source
    table: sa.Table
    engine: Engine | None

    def __post_init__(self) -> None:
        self.id = column_of(self.table, self.source.id_column, "id")
        name = self.source.weight_column
        self.weight: ColumnElement[Any] = sa.literal_column("1")
        if name is not None:
            self.weight = sa.func.coalesce(column_of(self.table, name, "weight"), 0)
        self.where = resolve(self.table, self.source.where)
        self.pending = resolve(self.table, self.source.pending)

    def filter(self, where: Where | None) -> ColumnElement[Any] | None:
        """The source's own filter and, if given, one more."""
        return both(self.where, resolve(self.table, where))

    @contextmanager
    def reading(self, inventory_connection: Connection) -> Iterator[Connection]:
        if self.engine is None:
            yield inventory_connection
        else:
            with self.engine.connect() as connection:
                yield connection

    def pick(
        self,
        connection: Connection,
        *,
        first: Any,
        last: Any,
        where: ColumnElement[Any] | None,
        weight: Any,
        count: int | None,
    ) -> Pick | None:
        """The longest run of items from ``first`` on (both bounds inclusive, None for open)
        within the weight and count budgets; a first item heavier than ``weight`` comes alone.
        The run stops before the first pending item."""
        bounds = []
        if first is not None:
            bounds.append(self.id >= first)
        if last is not None:
            bounds.append(self.id <= last)
        columns: list[Any] = [self.id, self.weight]
        wanted = where
        if self.pending is not None:
            columns.append(sa.case((self.pending, 1), else_=0))
            wanted = self.pending if where is None else sa.or_(where, self.pending)
        if wanted is not None:
            bounds.append(wanted)
        query = sa.select(*columns).where(*bounds).order_by(self.id)
        ids: list[Any] = []
        total: Any = 0
        # Pages rather than a server-side cursor: one round trip when a count bounds the range.
        page = count or 64
        with self.reading(connection) as reader:
            while True:
                lower = [] if not ids else [self.id > ids[-1]]
                rows = reader.execute(query.where(*lower).limit(page)).all()
                for row in rows:
                    if self.pending is not None and row[2]:
                        return self._result(ids, total)
                    if ids and weight is not None and total + row[1] > weight:
                        return self._result(ids, total)
                    ids.append(row[0])
                    total += row[1]
                if count is not None or len(rows) < page:  # a count-bounded page is all there can be
                    return self._result(ids, total)
                page = min(4 * page, 4096)

    @staticmethod
    def _result(ids: list[Any], total: Any) -> Pick | None:
        if not ids:
            return None
        return Pick(ids[0], ids[-1], len(ids), total)

    def items(
        self, connection: Connection, first: Any, last: Any, where: ColumnElement[Any] | None
    ) -> list[dict]:
        """The rows of the range ``first..last`` that pass ``where``, in id order."""
        query = sa.select(self.table).where(self.id.between(first, last)).order_by(self.id)
        if where is not None:
            query = query.where(where)
        with self.reading(connection) as reader:
            return [dict(row) for row in reader.execute(query).mappings()]
