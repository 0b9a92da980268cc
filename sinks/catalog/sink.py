"""Catalog: a sink that records one row per item that passes through a pipeline."""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import MetaData, delete, func, select, update
from sqlalchemy.engine import Connection

from datapipelines.context import TYPE_WILDCARD, PipelineContext
from datapipelines.data_sink import DataSink
from datapipelines.database import show_url, utc_now
from datapipelines.errors import type_name
from datapipelines.keys import key_for, type_name_of
from datapipelines.store import queries_of_items

from . import changes, files
from ._db import (
    CatalogError,
    changes_table,
    create_tables,
    engine_for,
    from_db,
    record_table,
    store_table,
    to_db,
    upsert,
)
from .changes import ADDED, DELETED, RESTORED, UPDATED, Change, difference
from .content import content_bytes, flatten
from .counts import Counts
from .kv import KeyValueStore
from .records import RecordQueries, save_fields
from .remote import check_templates

LOGGER = logging.getLogger(__name__)
_SOURCE = PipelineContext.Keys.SOURCE
URL_ENVIRONMENT = "DATAPIPELINES_CATALOG"
# Store keys touched in the same transaction as any change (as mmmeta's store has them).
META_LAST_UPDATED = "meta_last_updated"
_CHUNK = 500
# What makes a record different; its fields follow from its bytes, so they are compared only then.
_CONTENT = tuple(name for name in changes.LOGGED_COLUMNS if name != "retrieved_at")


def url_from(url: str | None, environment: str, what: str) -> str:
    """``url``, else the environment variable's value; neither raises CatalogError saying so."""
    found = url or os.environ.get(environment)
    if not found:
        raise CatalogError(f"No {what} URL: pass one or set ${environment}")
    return found


def _for_type(functions: Mapping[Any, Any], type_: Any) -> Any:
    """The function registered for ``type_``, one of its bases, or its qualified name."""
    for candidate in getattr(type_, "__mro__", (type_,)):
        if candidate in functions:
            return functions[candidate]
    return functions.get(type_name_of(type_))


class Catalog(RecordQueries, DataSink):
    """What was collected: one row per item, keyed like the stores key it.

    ``url`` is ``sqlite:///path`` (or a bare path) or ``postgresql://...``;
    without it, ``$DATAPIPELINES_CATALOG``. ``types`` limits the types it
    accepts (default: any). ``fields`` maps a type to a function returning extra
    fields of an item; ``content`` maps a type to a function returning the bytes
    to size and hash (see ``content.content_bytes``). ``remote`` maps names to
    location templates (``{"url": "https://host/{name}"}``, see ``remote``).
    Tables are ``<prefix>_records``, ``<prefix>_changes`` and ``<prefix>_store``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        types: Iterable[Any] | None = None,
        fields: Mapping[Any, Callable[[Any], Mapping[str, Any]]] | None = None,
        content: Mapping[Any, Callable[[Any], bytes]] | None = None,
        remote: Mapping[str, str] | None = None,
        prefix: str = "catalog",
        clock: Callable[[], datetime.datetime] = utc_now,
    ) -> None:
        self.remote_templates = check_templates(remote)
        self.engine = engine_for(url_from(url, URL_ENVIRONMENT, "catalogue"), "catalogue")
        metadata = MetaData()
        self.table = record_table(metadata, f"{prefix}_records", local=False)
        self.changes_table = changes_table(metadata, f"{prefix}_changes")
        store = store_table(metadata, f"{prefix}_store")
        create_tables(self.engine, metadata)
        self.store = KeyValueStore(self.engine, store, clock)
        self._types = frozenset(types) if types is not None else None
        self._fields = dict(fields or {})
        self._content = dict(content or {})
        self._clock = clock

    @property
    def url(self) -> str:
        return show_url(self.engine.url)

    def __repr__(self) -> str:
        return f"Catalog({self.url!r})"

    @property
    def accepts(self) -> Any:
        return TYPE_WILDCARD if self._types is None else self._types

    def touch(self, key: str) -> datetime.datetime:
        """Store the current time under ``key`` in :attr:`store`."""
        return self.store.touch(key)

    # -- recording ------------------------------------------------------------------
    def put(self, type: Any, item: Any, context: PipelineContext | None = None) -> None:
        self.put_many(type, [item], context)

    def put_many(self, type: Any, items: Iterable[Any], context: PipelineContext | None = None) -> None:
        items = list(items)
        # The same rule as the stores: the call's queries, else each item's query.
        queries = queries_of_items(self, type, items, context)
        source = context.get(_SOURCE) if context is not None else None
        entries = [(q, item) for q, item in zip(queries, items, strict=True) if q is not None]
        self.record_many(type, entries, source=source)

    def record(self, type: Any, item: Any, *, query: Mapping[str, Any], source: str | None = None) -> None:
        """Record ``item`` of ``type`` under ``query`` outside any pipeline."""
        self.record_many(type, [(query, item)], source=source)

    def record_many(
        self, type: Any, entries: Iterable[tuple[Mapping[str, Any], Any]], *, source: str | None = None
    ) -> int:
        """Record (query, item) pairs in one transaction; a key seen again updates its row.

        A record whose content, source and fields are unchanged is left as it was.
        """
        if self._types is not None and type not in self._types:
            raise self.unsupported(type)
        now = to_db(self._clock())
        rows = {}
        for query, item in entries:
            row = self._row(type, query, item, source, now)
            rows[row["key"]] = row
        with self.engine.begin() as connection:
            self._apply(connection, rows, now)
        return len(rows)

    def _apply(
        self, connection: Connection, rows: Mapping[str, dict[str, Any]], now: datetime.datetime
    ) -> dict[str, str]:
        """Write the rows whose bytes, source, query or deletion changed, and log what changed.

        Returns each written key's action. Being fetched again (only
        ``retrieved_at`` differs) is no change.
        """
        table = self.table
        old = self._read(connection, rows, [table.c[name] for name in changes.LOGGED_COLUMNS])
        pending = []
        for key, row in rows.items():
            # A row is live unless it says otherwise (generate's "original-missing").
            row = {"deleted_at": None, "deleted_reason": None, **row}
            before = old.get(key)
            deleted = row["deleted_at"] is not None
            if deleted and before is not None and before["deleted_reason"] == row["deleted_reason"]:
                row["deleted_at"] = before["deleted_at"] or row["deleted_at"]  # deleted for the same reason
            if before is None or any(before[name] != row[name] for name in _CONTENT):
                pending.append((key, row, before))
        # Only changed records' fields are read: decoding every record's JSON costs more than the write.
        previous = self._read(connection, [key for key, _, before in pending if before], [table.c.fields])
        written, log, actions = [], [], {}
        for key, row, before in pending:
            if row["deleted_at"] is not None:
                action = DELETED
            elif before is None:
                action = ADDED
            else:
                action = RESTORED if before["deleted_at"] is not None else UPDATED
            old_row = None if before is None else {**before, "fields": previous[key]["fields"]}
            columns, fields = difference(old_row, row)
            written.append(row)
            log.append(changes.entry(key, row["type"], now, action, columns, fields))
            actions[key] = action
        upsert(connection, table, written)
        self._logged(connection, log)
        return actions

    def _read(self, connection: Connection, keys: Iterable[str], columns: list[Any]) -> dict[str, Any]:
        """``columns`` of the records with ``keys``, by key, a chunk of keys per query."""
        table = self.table
        keys = list(keys)
        found: dict[str, Any] = {}
        for start in range(0, len(keys), _CHUNK):
            statement = select(table.c.key, *columns).where(table.c.key.in_(keys[start : start + _CHUNK]))
            found.update((row.key, row._mapping) for row in connection.execute(statement))
        return found

    def _logged(self, connection: Connection, entries: list[dict[str, Any]]) -> None:
        """Append to the change log and touch ``meta_last_updated``, if anything changed."""
        if entries:
            changes.append(connection, self.changes_table, entries)
            self.store.set_in(connection, META_LAST_UPDATED, self._clock())

    def _soft_delete(
        self, connection: Connection, keys: Collection[str], reason: str, now: datetime.datetime
    ) -> int:
        """Mark live records deleted for ``reason`` (and bump ``last_updated``, so consumers follow)."""
        table = self.table
        log: list[dict[str, Any]] = []
        keys = list(keys)
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            live = table.c.key.in_(chunk), table.c.deleted_at.is_(None)
            found = connection.execute(select(table.c.key, table.c.type).where(*live)).all()
            connection.execute(
                update(table)
                .where(table.c.key.in_([row.key for row in found]))
                .values(deleted_at=now, deleted_reason=reason, last_updated=now)
            )
            columns = ("deleted_at", "deleted_reason")
            log.extend(changes.entry(row.key, row.type, now, DELETED, columns) for row in found)
        self._logged(connection, log)
        return len(log)

    def _hard_delete(self, connection: Connection, keys: Collection[str], now: datetime.datetime) -> int:
        table = self.table
        log: list[dict[str, Any]] = []
        keys = list(keys)
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            found = connection.execute(select(table.c.key, table.c.type).where(table.c.key.in_(chunk))).all()
            connection.execute(delete(table).where(table.c.key.in_(chunk)))
            log.extend(changes.entry(row.key, row.type, now, DELETED) for row in found)
        self._logged(connection, log)
        return len(log)

    def _row(
        self, type_: Any, query: Mapping[str, Any], item: Any, source: str | None, now: datetime.datetime
    ) -> dict[str, Any]:
        try:
            data = content_bytes(item, _for_type(self._content, type_))
            extract = _for_type(self._fields, type_)
            extracted = {} if extract is None else extract(item)
            if not isinstance(extracted, Mapping):
                raise TypeError(f"the fields function returned a {type(extracted).__name__}, not a mapping")
            fields = flatten(extracted)
        except (TypeError, ValueError) as error:
            raise CatalogError(f"Cannot catalogue a {type_name(type_)} (query {query!r}): {error}") from None
        return {
            "key": key_for(type_, query),
            "type": type_name_of(type_),
            "query": dict(query),
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "source": source,
            "retrieved_at": now,
            "last_updated": now,
            "fields": fields,
        }

    def generate(self, folder: str | Path, **options: Any) -> Counts:
        """Add and update records from the JSON metadata files below ``folder``.

        See :func:`datapipelines.sinks.catalog.files.generate` for the options.
        """
        return files.generate(self, folder, **options)

    def delete(self, type: Any, query: Mapping[str, Any], *, reason: str | None = None) -> bool:
        """Remove the record of ``type`` for ``query``, or with ``reason`` soft-delete it; True if
        there was one (a live one, for a soft delete)."""
        key = key_for(type, query)
        now = to_db(self._clock())
        with self.engine.begin() as connection:
            if reason is None:
                return bool(self._hard_delete(connection, [key], now))
            return bool(self._soft_delete(connection, [key], reason, now))

    # -- the change log -----------------------------------------------------------------
    def changes(self, since: datetime.datetime | None = None, *, key: str | None = None) -> list[Change]:
        """What changed at or after ``since`` (everything without it), oldest first.

        Each :class:`Change` names the record's key and type, the time, the
        action (added, updated, deleted, restored) and the columns and fields
        that changed. ``key`` limits it to one record.
        """
        return changes.read(self.engine, self.changes_table, since, key)

    def squash(self, before: datetime.datetime | None = None) -> int:
        """Fold the change log (entries older than ``before``, or all) into one entry per record.

        Returns how many entries were removed. ``changes(since)`` for a time
        within the folded span then reports, per record, everything that changed
        in the span.
        """
        return changes.squash(self.engine, self.changes_table, before)

    @property
    def meta_last_updated(self) -> datetime.datetime | None:
        """When anything in the catalogue last changed (the store's ``meta_last_updated``), or None."""
        return self.store.get(META_LAST_UPDATED)

    # -- queries: find, find_one, count and dump come from RecordQueries ---------------
    def summary(self) -> dict[str, Any]:
        """Live records, bytes and the latest update per type, soft-deleted ones per reason,
        and the key-value store."""
        table = self.table
        statement = (
            select(table.c.type, func.count(), func.sum(table.c.size), func.max(table.c.last_updated))
            .where(table.c.deleted_at.is_(None))
            .group_by(table.c.type)
            .order_by(table.c.type)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        types = {
            name: {"records": records, "bytes": int(size or 0), "last_updated": from_db(updated)}
            for name, records, size, updated in rows
        }
        deleted = deleted_reasons(self.engine, table)
        return {
            "url": self.url,
            "records": sum(entry["records"] for entry in types.values()),
            "deleted": sum(deleted.values()),
            "deleted_reasons": deleted,
            "types": types,
            "changes": count_rows(self.engine, self.changes_table),
            "store": dict(self.store),
        }

    def _save_record(self, record_id: int, changed: Mapping[str, Any], removed: set[str]) -> None:
        # Bumping last_updated is what tells every consumer's update() to copy the change.
        now = to_db(self._clock())
        with self.engine.begin() as connection:
            key, type_name = save_fields(
                connection, self.table, "fields", record_id, changed, removed, {"last_updated": now}
            )
            names = sorted({*changed, *removed})
            self._logged(connection, [changes.entry(key, type_name, now, UPDATED, (), names)])

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        """Close every connection (do this before copying a SQLite catalogue elsewhere)."""
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def deleted_reasons(engine: Any, table: Any) -> dict[str, int]:
    """Soft-deleted records per deletion reason."""
    statement = (
        select(table.c.deleted_reason, func.count())
        .where(table.c.deleted_at.is_not(None))
        .group_by(table.c.deleted_reason)
        .order_by(table.c.deleted_reason)
    )
    with engine.connect() as connection:
        return {str(reason): count for reason, count in connection.execute(statement)}


def count_rows(engine: Any, table: Any) -> int:
    with engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar_one())
