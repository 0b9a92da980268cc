"""Catalog: a sink that records one row per item that passes through a pipeline."""

from __future__ import annotations

import datetime
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import MetaData, delete, func, select

from datapipelines.context import TYPE_WILDCARD, PipelineContext
from datapipelines.errors import type_name
from datapipelines.keys import key_for, type_name_of
from datapipelines.sink import DataSink
from datapipelines.store import queries_of_items

from ._db import (
    CatalogError,
    display_url,
    engine_for,
    from_db,
    record_table,
    store_table,
    to_db,
    upsert,
    utc_now,
)
from .content import content_bytes, flatten
from .counts import Counts
from .kv import KeyValueStore
from .records import Record, count_records, find_records, save_fields

LOGGER = logging.getLogger(__name__)
_SOURCE = PipelineContext.Keys.SOURCE


def _for_type(functions: Mapping[Any, Any], type_: Any) -> Any:
    """The function registered for ``type_``, one of its bases, or its qualified name."""
    for candidate in getattr(type_, "__mro__", (type_,)):
        if candidate in functions:
            return functions[candidate]
    return functions.get(type_name_of(type_))


class Catalog(DataSink):
    """What was collected: one row per item, keyed like the stores key it.

    ``url`` is ``sqlite:///path`` (or a bare path) or ``postgresql://...``.
    ``types`` limits the types it accepts (default: any). ``fields`` maps a type
    to a function returning extra fields of an item; ``content`` maps a type to a
    function returning the bytes to size and hash (see ``content.content_bytes``).
    Tables are ``<prefix>_records`` and ``<prefix>_store``.
    """

    def __init__(
        self,
        url: str,
        *,
        types: Iterable[Any] | None = None,
        fields: Mapping[Any, Callable[[Any], Mapping[str, Any]]] | None = None,
        content: Mapping[Any, Callable[[Any], bytes]] | None = None,
        prefix: str = "catalog",
        clock: Callable[[], datetime.datetime] = utc_now,
    ) -> None:
        self.engine = engine_for(url)
        metadata = MetaData()
        self.table = record_table(metadata, f"{prefix}_records", local=False)
        store = store_table(metadata, f"{prefix}_store")
        metadata.create_all(self.engine)
        self.store = KeyValueStore(self.engine, store, clock)
        self._types = frozenset(types) if types is not None else None
        self._fields = dict(fields or {})
        self._content = dict(content or {})
        self._clock = clock

    @property
    def url(self) -> str:
        return display_url(self.engine)

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
        """Record (query, item) pairs in one transaction; a key seen again updates its row."""
        if self._types is not None and type not in self._types:
            raise self.unsupported(type)
        now = to_db(self._clock())
        rows = {}
        for query, item in entries:
            row = self._row(type, query, item, source, now)
            rows[row["key"]] = row
        with self.engine.begin() as connection:
            upsert(connection, self.table, list(rows.values()))
        return len(rows)

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
        from .files import generate

        return generate(self, folder, **options)

    def delete(self, type: Any, query: Mapping[str, Any]) -> bool:
        """Remove the record of ``type`` for ``query``; True if there was one."""
        with self.engine.begin() as connection:
            result = connection.execute(delete(self.table).where(self.table.c.key == key_for(type, query)))
        return bool(result.rowcount)

    # -- queries ----------------------------------------------------------------------
    def find(self, *, limit: int | None = None, **filters: Any) -> Iterator[Record]:
        """Records matching every filter, in the order they were first recorded."""
        return find_records(self, self.engine, self.table, filters, include_deleted=True, limit=limit)

    def find_one(self, **filters: Any) -> Record | None:
        return next(self.find(limit=1, **filters), None)

    def count(self, **filters: Any) -> int:
        return count_records(self.engine, self.table, filters, include_deleted=True)

    def summary(self) -> dict[str, Any]:
        """Records, bytes and the latest update per type, and the key-value store."""
        table = self.table
        statement = (
            select(table.c.type, func.count(), func.sum(table.c.size), func.max(table.c.last_updated))
            .group_by(table.c.type)
            .order_by(table.c.type)
        )
        with self.engine.connect() as connection:
            rows = connection.execute(statement).all()
        types = {
            name: {"records": records, "bytes": int(size or 0), "last_updated": from_db(updated)}
            for name, records, size, updated in rows
        }
        return {
            "url": self.url,
            "records": sum(entry["records"] for entry in types.values()),
            "types": types,
            "store": dict(self.store),
        }

    def _save_record(self, record_id: int, changed: Mapping[str, Any], removed: set[str]) -> None:
        # Bumping last_updated is what tells every consumer's update() to copy the change.
        stamp = {"last_updated": to_db(self._clock())}
        save_fields(self.engine, self.table, "fields", record_id, changed, removed, stamp)

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
