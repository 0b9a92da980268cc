"""Records and queries over them: ``find(document_type="contract", imported=False)``.

A filter names a column (``type``, ``source``, ``size``...) or a field. Fields
live in JSON: the catalogue's extracted ``fields`` and, in a local state, the
consumer's own ``local`` fields, which win over a remote field of the same name.
A field that was never set reads as None, and ``name=False`` matches it too, so
``find(imported=False)`` finds what nobody has marked yet. ``<name>_after`` is
inclusive and ``<name>_before`` exclusive; ``retrieved_after`` compares
``retrieved_at``. ``query={"id": 3}`` matches records whose query has those
values, and ``fields={"type": "x"}`` reaches fields named like a column.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from functools import partial
from typing import IO, Any, Protocol

from sqlalchemy import ColumnElement, Engine, Table, and_, false, func, not_, or_, select, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection

from datapipelines.keys import type_name_of

from ._db import DATE_COLUMNS, CatalogError, from_db, pages, to_db
from .content import canonical_json
from .remote import Remote, render

# Columns every record shows; none of them can be set through a record.
CORE_COLUMNS = (
    "id", "key", "type", "query", "size", "sha256", "source", "retrieved_at", "last_updated",
    "local_updated", "deleted_at", "deleted_reason",
)  # fmt: skip
_RESERVED = frozenset(CORE_COLUMNS)
_SCALARS = (str, int, float, bool, type(None), datetime.datetime, datetime.date)
Predicate = Callable[[Any, str], ColumnElement[bool]]


class Owner(Protocol):
    @property
    def remote_templates(self) -> Mapping[str, str]: ...

    def _save_record(self, record_id: int, changed: Mapping[str, Any], removed: set[str]) -> None: ...


class Record(MutableMapping[str, Any]):
    """One catalogued item as a mapping: columns, then local fields, then remote fields.

    Set fields with ``record["imported"] = True`` and write them with ``save()``.
    A field named like a column (``id``, ``type``...) is hidden by the column in
    ``record[name]``: :attr:`columns` and :meth:`field` never mix the two.
    """

    def __init__(
        self, owner: Owner, core: dict[str, Any], fields: dict[str, Any], local: dict[str, Any] | None
    ) -> None:
        self._owner = owner
        self._core = core
        self._fields = fields
        self._local = local
        self._changed: dict[str, Any] = {}
        self._removed: set[str] = set()

    @property
    def id(self) -> int:
        return int(self._core["id"])

    @property
    def key(self) -> str:
        return str(self._core["key"])

    @property
    def fields(self) -> dict[str, Any]:
        """Every field, local over remote, including those named like a column."""
        return {**self._fields, **(self._local or {})}

    @property
    def columns(self) -> dict[str, Any]:
        """The catalogue's own columns (id, key, type, query, size, ...), never a field."""
        return dict(self._core)

    def field(self, name: str, default: Any = None) -> Any:
        """The field ``name`` (local over remote), never a column: ``record.field("id")``."""
        if self._local is not None and name in self._local:
            return self._local[name]
        return self._fields.get(name, default)

    @property
    def uid(self) -> Any:
        """The query's value when the query has one entry (a generated record's key field), else the key."""
        query = self._core.get("query")
        if isinstance(query, Mapping) and len(query) == 1:
            return next(iter(query.values()))
        return self.key

    @property
    def name(self) -> Any:
        """The ``file_name`` field, else :attr:`uid` (mmmeta's ``File.name``)."""
        return self.field("file_name", self.uid)

    @property
    def remote(self) -> Remote:
        """Locations from the owner's remote templates: ``record.remote.url`` (see ``remote``)."""
        values = {"uid": self.uid, "name": self.name, "key": self.key, "type": self._core.get("type")}
        return render(self._owner.remote_templates, {**values, **self.fields}, self.key)

    def as_dict(self) -> dict[str, Any]:
        """Columns, then ``fields`` (and ``remote`` when there are templates), nothing shadowed."""
        document = {**self._core, "fields": self.fields}
        if self._owner.remote_templates:
            document["remote"] = dict(self.remote)
        return document

    @property
    def deleted(self) -> bool:
        return self._core.get("deleted_at") is not None

    def _writable(self) -> dict[str, Any]:
        return self._fields if self._local is None else self._local

    def __getitem__(self, name: str) -> Any:
        if name in self._core:
            return self._core[name]
        if self._local is not None and name in self._local:
            return self._local[name]
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        names = dict.fromkeys(self._core)
        names.update(dict.fromkeys(self._local or {}))
        names.update(dict.fromkeys(self._fields))
        return iter(names)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __setitem__(self, name: str, value: Any) -> None:
        self._check_name(name)
        try:
            canonical_json(value)
        except (TypeError, ValueError) as error:
            raise CatalogError(f"Field {name!r} of record {self.key}: {error}") from None
        self._writable()[name] = value
        self._changed[name] = value
        self._removed.discard(name)

    def __delitem__(self, name: str) -> None:
        self._check_name(name)
        del self._writable()[name]
        self._changed.pop(name, None)
        self._removed.add(name)

    def _check_name(self, name: str) -> None:
        if name in _RESERVED:
            raise CatalogError(f"{name!r} is kept by the catalogue and cannot be set on record {self.key}")

    def save(self) -> None:
        """Write the fields set or deleted since the record was read (or last saved)."""
        if self._changed or self._removed:
            self._owner._save_record(self.id, self._changed, self._removed)
            self._changed, self._removed = {}, set()

    def __repr__(self) -> str:
        return f"Record({dict(self)!r})"


def make_record(owner: Owner, row: Any, table: Table) -> Record:
    values = row._mapping
    core = {name: values[name] for name in CORE_COLUMNS if name in values}
    for name in DATE_COLUMNS & core.keys():
        core[name] = from_db(core[name])
    local = dict(values["local"]) if "local" in table.c else None
    return Record(owner, core, dict(values["fields"]), local)


def save_fields(
    connection: Connection, table: Table, column: str, record_id: int,
    changed: Mapping[str, Any], removed: set[str], stamp: Mapping[str, Any],
) -> tuple[str, str]:  # fmt: skip
    """Merge changes into one JSON column of a row in the caller's transaction; the row's key and type."""
    current = connection.execute(
        select(table.c[column], table.c.key, table.c.type).where(table.c.id == record_id).with_for_update()
    ).one_or_none()
    if current is None:
        raise CatalogError(f"Record {record_id} is no longer in {table.name}")
    merged = {k: v for k, v in current[0].items() if k not in removed}
    merged.update(changed)
    connection.execute(update(table).where(table.c.id == record_id).values({column: merged, **stamp}))
    return current.key, current.type


# -- filters ---------------------------------------------------------------------
def _sqlite_path(name: str) -> str:
    if '"' in name:
        raise CatalogError(f"Field names used in find() cannot contain '\"': {name!r}")
    return f'$."{name}"'


class _SQLite:
    @staticmethod
    def present(column: Any, name: str) -> ColumnElement[bool]:
        return func.json_type(column, _sqlite_path(name)).is_not(None)

    @staticmethod
    def absent(column: Any, name: str) -> ColumnElement[bool]:
        kind = func.json_type(column, _sqlite_path(name))
        return or_(kind.is_(None), kind == "null")

    @staticmethod
    def equals(column: Any, name: str, value: Any) -> ColumnElement[bool]:
        kind = func.json_type(column, _sqlite_path(name))
        if isinstance(value, bool):
            return kind == ("true" if value else "false")
        kinds = ("text",) if isinstance(value, str) else ("integer", "real")
        return and_(kind.in_(kinds), func.json_extract(column, _sqlite_path(name)) == value)

    @staticmethod
    def text(column: Any, name: str) -> Any:
        return func.json_extract(column, _sqlite_path(name))


class _PostgreSQL:
    # The columns are JSONB on PostgreSQL; coercing gives the JSONB operators.
    @staticmethod
    def present(column: Any, name: str) -> ColumnElement[bool]:
        return type_coerce(column, JSONB).has_key(name)

    @staticmethod
    def absent(column: Any, name: str) -> ColumnElement[bool]:
        document = type_coerce(column, JSONB)
        return or_(not_(document.has_key(name)), func.jsonb_typeof(document[name]) == "null")

    @staticmethod
    def equals(column: Any, name: str, value: Any) -> ColumnElement[bool]:
        # Containment compares JSON values with their types: true is not 1, "1" is not 1.
        return type_coerce(column, JSONB).contains({name: value})

    @staticmethod
    def text(column: Any, name: str) -> Any:
        return type_coerce(column, JSONB)[name].astext


def where(table: Table, filters: Mapping[str, Any], dialect: str) -> list[ColumnElement[bool]]:
    """The SQL conditions for ``find(**filters)`` on ``table``."""
    json = _SQLite if dialect == "sqlite" else _PostgreSQL
    local = table.c.local if "local" in table.c else None

    def field(name: str, predicate: Predicate) -> ColumnElement[bool]:
        # A local field, when present, hides the remote one of the same name.
        if local is None:
            return predicate(table.c.fields, name)
        return or_(
            and_(json.present(local, name), predicate(local, name)),
            and_(not_(json.present(local, name)), predicate(table.c.fields, name)),
        )

    def condition(name: str, value: Any, columns: bool) -> ColumnElement[bool]:
        if columns and name in table.c and name in _RESERVED:
            return _column_condition(table, name, value)
        comparison = _comparison(name)
        if comparison is not None:
            stem, after = comparison
            column = _date_column(table, stem) if columns else None
            if column is not None:
                bound = to_db(as_datetime(name, value))
                return column >= bound if after else column < bound  # type: ignore[no-any-return]
            return field(stem, partial(_text_bound, json, bound_text(value), after))
        value = _scalar(name, value)
        if value is None:
            return field(name, json.absent)
        if value is False:
            return or_(field(name, partial(_equals, json, False)), field(name, json.absent))
        return field(name, partial(_equals, json, value))

    conditions: list[ColumnElement[bool]] = []
    for name, value in filters.items():
        if name in ("fields", "query"):
            if not isinstance(value, Mapping):
                raise CatalogError(f"find({name}=...) takes a mapping of names to values, got {value!r}")
            if name == "fields":
                # Fields named like a column (id, type, source...) are reached this way.
                conditions.extend(condition(key, item, False) for key, item in value.items())
            else:
                for key, item in value.items():
                    item = _scalar(key, item)
                    column = table.c.query
                    conditions.append(
                        json.absent(column, key) if item is None else json.equals(column, key, item)
                    )
        else:
            conditions.append(condition(name, value, True))
    return conditions


def as_datetime(name: str, value: Any) -> datetime.datetime:
    """A date filter's value as a datetime: a datetime, a date (its midnight, UTC) or ISO 8601 text."""
    if isinstance(value, datetime.datetime):
        return value
    if isinstance(value, datetime.date):
        return datetime.datetime.combine(value, datetime.time(), datetime.timezone.utc)
    if isinstance(value, str):
        try:
            # Python 3.10 does not read a trailing "Z" itself.
            return datetime.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        except ValueError:
            pass
    raise CatalogError(f"{name!r} needs an ISO 8601 date, got {value!r}")


def bound_text(value: Any) -> Any:
    """The text a field is compared with for ``<field>_after`` / ``_before``.

    Text is taken as it is. A date, or a datetime at midnight UTC, is its date
    alone ("2019-04-12"), so a field holding that date compares equal to it
    rather than below its longer ISO form: ``_after`` includes the day and
    ``_before`` leaves it out, whether the field holds dates or datetimes.
    """
    if isinstance(value, datetime.datetime):
        if value.time() == datetime.time() and value.utcoffset() in (None, datetime.timedelta(0)):
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


def _scalar(name: str, value: Any) -> Any:
    if not isinstance(value, _SCALARS):
        raise CatalogError(f"find() compares single values; got a {type(value).__name__} for {name!r}")
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    return value


def _equals(json: Any, value: Any, column: Any, name: str) -> ColumnElement[bool]:
    return json.equals(column, name, value)  # type: ignore[no-any-return]


def _text_bound(json: Any, bound: Any, after: bool, column: Any, name: str) -> ColumnElement[bool]:
    text = json.text(column, name)
    return text >= bound if after else text < bound  # type: ignore[no-any-return]


def _comparison(name: str) -> tuple[str, bool] | None:
    for suffix, after in (("_after", True), ("_before", False)):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], after
    return None


def _date_column(table: Table, stem: str) -> Any:
    for name in (stem, f"{stem}_at"):
        if name in DATE_COLUMNS and name in table.c:
            return table.c[name]
    return None


def _column_condition(table: Table, name: str, value: Any) -> ColumnElement[bool]:
    column = table.c[name]
    if value is None:
        return column.is_(None)
    if name in DATE_COLUMNS:
        return column == to_db(as_datetime(name, value))  # type: ignore[no-any-return]
    if name == "type" and not isinstance(value, str):
        value = type_name_of(value)
    return column == value  # type: ignore[no-any-return]


def find_records(
    owner: Owner, engine: Engine, table: Table, filters: Mapping[str, Any],
    *, include_deleted: bool, limit: int | None,
) -> Iterator[Record]:  # fmt: skip
    """Matching records in id order, read a page at a time."""
    statement = select(table).where(*_conditions(engine, table, filters, include_deleted))
    remaining = limit
    for rows in pages(engine, statement, table.c.id):
        for row in rows:
            if remaining is not None:
                if remaining <= 0:
                    return
                remaining -= 1
            yield make_record(owner, row, table)


def count_records(engine: Engine, table: Table, filters: Mapping[str, Any], *, include_deleted: bool) -> int:
    statement = (
        select(func.count()).select_from(table).where(*_conditions(engine, table, filters, include_deleted))
    )
    with engine.connect() as connection:
        return int(connection.execute(statement).scalar_one())


def _conditions(
    engine: Engine, table: Table, filters: Mapping[str, Any], include_deleted: bool
) -> list[ColumnElement[bool]]:
    conditions = where(table, filters, engine.dialect.name)
    # Asking about deletion (deleted_at=..., deleted_after=...) implies deleted records.
    asks_deleted = any(name.startswith("deleted") for name in filters)
    if "deleted_at" in table.c and not include_deleted and not asks_deleted:
        conditions.append(table.c.deleted_at.is_(None))
    return conditions or [~false()]


class RecordQueries:
    """``find``, ``find_one``, ``count`` and ``dump`` over ``self.table`` (catalogue or local state)."""

    engine: Engine
    table: Table
    remote_templates: Mapping[str, str]

    def _save_record(self, record_id: int, changed: Mapping[str, Any], removed: set[str]) -> None:
        raise NotImplementedError

    def find(
        self, *, include_deleted: bool = False, limit: int | None = None, **filters: Any
    ) -> Iterator[Record]:
        """Records matching every filter (see the module docstring), in the order they were
        first recorded; soft-deleted ones only if asked."""
        return find_records(
            self, self.engine, self.table, filters, include_deleted=include_deleted, limit=limit
        )

    def find_one(self, *, include_deleted: bool = False, **filters: Any) -> Record | None:
        return next(self.find(include_deleted=include_deleted, limit=1, **filters), None)

    def count(self, *, include_deleted: bool = False, **filters: Any) -> int:
        return count_records(self.engine, self.table, filters, include_deleted=include_deleted)

    def dump(self, out: IO[str] | None = None, *, include_deleted: bool = False, **filters: Any) -> int:
        """Write the matching records to ``out`` (default stdout) as JSON lines, one
        ``Record.as_dict()`` each; returns how many."""
        stream = sys.stdout if out is None else out
        written = 0
        for record in self.find(include_deleted=include_deleted, **filters):
            stream.write(canonical_json(record.as_dict()) + "\n")
            written += 1
        return written
