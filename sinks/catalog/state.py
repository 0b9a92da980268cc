"""LocalState: one consumer's own state ("imported", "indexed") beside a remote catalogue.

``update()`` merges the catalogue in: new records are added, changed ones get
the catalogue's columns and fields, records gone from the catalogue are
soft-deleted with the time and a reason, and local fields are never touched.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from sqlalchemy import MetaData, bindparam, func, insert, select, update

from ._db import REMOTE_COLUMNS, display_url, engine_for, pages, record_table, store_table, to_db, utc_now
from .counts import Counts
from .kv import KeyValueStore
from .records import Record, count_records, find_records, save_fields
from .sink import Catalog

DELETED_REASON = "removed from the remote catalogue"
_CHUNK = 500


class LocalState:
    """A consumer's state database for ``catalog`` (a Catalog or its URL) at ``url``.

    Tables are ``<prefix>_records`` and ``<prefix>_store``, so several consumers
    can share one database under different prefixes.
    """

    def __init__(
        self,
        catalog: Catalog | str,
        url: str,
        *,
        prefix: str = "state",
        clock: Callable[[], datetime.datetime] = utc_now,
    ) -> None:
        self.catalog = catalog if isinstance(catalog, Catalog) else Catalog(catalog, clock=clock)
        self.engine = engine_for(url, "local state")
        metadata = MetaData()
        self.table = record_table(metadata, f"{prefix}_records", local=True)
        store = store_table(metadata, f"{prefix}_store")
        metadata.create_all(self.engine)
        self.store = KeyValueStore(self.engine, store, clock)
        self._clock = clock

    def __repr__(self) -> str:
        return f"LocalState({self.catalog.url!r}, {display_url(self.engine)!r})"

    def touch(self, key: str) -> datetime.datetime:
        return self.store.touch(key)

    def update(
        self, *, reason: str = DELETED_REASON, progress: Callable[[int, int], None] | None = None
    ) -> Counts:
        """Merge the catalogue into the local state, in one transaction, and count what changed.

        A record counts as changed when its SHA-256 or ``last_updated`` differ
        (every catalogue write bumps ``last_updated``). A soft-deleted record
        that comes back is restored with its local fields.
        """
        table = self.table
        with self.engine.connect() as connection:
            known = {
                row.key: (row.sha256, row.last_updated, row.deleted_at is not None)
                for row in connection.execute(
                    select(table.c.key, table.c.sha256, table.c.last_updated, table.c.deleted_at)
                )
            }
        total = self.catalog.count()
        remote = self.catalog.table
        counts = Counts()
        seen: set[str] = set()
        done = 0
        refresh = update(table).where(table.c.key == bindparam("match_key"))
        with self.engine.begin() as connection:
            for rows in pages(self.catalog.engine, select(remote), remote.c.id):
                added, changed = [], []
                for row in rows:
                    values = {name: row._mapping[name] for name in REMOTE_COLUMNS}
                    seen.add(row.key)
                    old = known.get(row.key)
                    if old is None:
                        counts.added += 1
                        added.append({**values, "local": {}})
                    elif old[2]:
                        counts.restored += 1
                        changed.append(values)
                    elif old[:2] != (row.sha256, row.last_updated):
                        counts.updated += 1
                        changed.append(values)
                    else:
                        counts.skipped += 1
                if added:
                    connection.execute(insert(table), added)
                if changed:
                    connection.execute(
                        refresh,
                        [
                            {**{k: v for k, v in values.items() if k != "key"}, "match_key": values["key"],
                             "deleted_at": None, "deleted_reason": None}
                            for values in changed
                        ],
                    )  # fmt: skip
                done += len(rows)
                if progress is not None:
                    progress(done, total)
            gone = [key for key, old in known.items() if key not in seen and not old[2]]
            counts.skipped += sum(1 for key, old in known.items() if key not in seen and old[2])
            now = to_db(self._clock())
            for start in range(0, len(gone), _CHUNK):
                connection.execute(
                    update(table)
                    .where(table.c.key.in_(gone[start : start + _CHUNK]))
                    .values(deleted_at=now, deleted_reason=reason)
                )
            counts.deleted = len(gone)
        return counts

    # -- queries ----------------------------------------------------------------------
    def find(
        self, *, include_deleted: bool = False, limit: int | None = None, **filters: Any
    ) -> Iterator[Record]:
        """Records matching every filter (see ``records``), soft-deleted ones only if asked."""
        return find_records(
            self, self.engine, self.table, filters, include_deleted=include_deleted, limit=limit
        )

    def find_one(self, *, include_deleted: bool = False, **filters: Any) -> Record | None:
        return next(self.find(include_deleted=include_deleted, limit=1, **filters), None)

    def count(self, *, include_deleted: bool = False, **filters: Any) -> int:
        return count_records(self.engine, self.table, filters, include_deleted=include_deleted)

    def summary(self) -> dict[str, Any]:
        """Live and soft-deleted records, how many carry local changes, and the key-value store."""
        table = self.table
        live = table.c.deleted_at.is_(None)
        statement = select(
            func.count().filter(live),
            func.count().filter(~live),
            func.count().filter(live, table.c.local_updated.is_not(None)),
        )
        with self.engine.connect() as connection:
            records, deleted, changed = connection.execute(statement).one()
        return {
            "url": display_url(self.engine),
            "catalog": self.catalog.url,
            "records": records,
            "deleted": deleted,
            "changed_locally": changed,
            "store": dict(self.store),
        }

    def _save_record(self, record_id: int, changed: Mapping[str, Any], removed: set[str]) -> None:
        stamp = {"local_updated": to_db(self._clock())}
        save_fields(self.engine, self.table, "local", record_id, changed, removed, stamp)

    # -- lifetime ---------------------------------------------------------------------
    def close(self) -> None:
        self.engine.dispose()
        self.catalog.close()

    def __enter__(self) -> LocalState:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
