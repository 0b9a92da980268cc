"""LocalState: one consumer's own state ("imported", "indexed") beside a remote catalogue.

``update()`` merges the catalogue in: new records are added, changed ones get
the catalogue's columns and fields, records gone from the catalogue are
soft-deleted with the time and a reason (and those the catalogue soft-deleted
keep its reason), and local fields are never touched.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from sqlalchemy import MetaData, bindparam, func, insert, select, update

from datapipelines.database import show_url, utc_now

from ._db import (
    REMOTE_COLUMNS,
    CatalogError,
    create_tables,
    engine_for,
    pages,
    record_table,
    store_table,
    to_db,
)
from .counts import Counts
from .kv import KeyValueStore
from .records import RecordQueries, save_fields
from .remote import check_templates
from .sink import Catalog, deleted_reasons, url_from

DELETED_REASON = "state-missing"  # mmmeta's reason for a record gone from the catalogue
STATE_LAST_UPDATED = "state_last_updated"
STATE_ENVIRONMENT = "DATAPIPELINES_STATE"
_CHUNK = 500


class LocalState(RecordQueries):
    """A consumer's state database for ``catalog`` (a Catalog or its URL) at ``url``.

    Without ``catalog``, ``$DATAPIPELINES_CATALOG``; without ``url``,
    ``$DATAPIPELINES_STATE``. ``remote`` templates default to the catalogue's.
    Tables are ``<prefix>_records`` and ``<prefix>_store``, so several consumers
    can share one database under different prefixes.
    """

    def __init__(
        self,
        catalog: Catalog | str | None = None,
        url: str | None = None,
        *,
        prefix: str = "state",
        remote: Mapping[str, str] | None = None,
        clock: Callable[[], datetime.datetime] = utc_now,
    ) -> None:
        self.catalog = catalog if isinstance(catalog, Catalog) else Catalog(catalog, clock=clock)
        self.remote_templates = self.catalog.remote_templates if remote is None else check_templates(remote)
        self.engine = engine_for(url_from(url, STATE_ENVIRONMENT, "local state"), "local state")
        if self.engine.url == self.catalog.engine.url and f"{prefix}_records" == self.catalog.table.name:
            # The state's tables would be the catalogue's own: its store and records overwritten.
            self.engine.dispose()
            raise CatalogError(
                f"The local state's tables ({prefix}_*) in {show_url(self.engine.url)} are the catalogue's: "
                "give the state another prefix or database"
            )
        metadata = MetaData()
        self.table = record_table(metadata, f"{prefix}_records", local=True)
        store = store_table(metadata, f"{prefix}_store")
        create_tables(self.engine, metadata)
        self.store = KeyValueStore(self.engine, store, clock)
        self._clock = clock

    def __repr__(self) -> str:
        return f"LocalState({self.catalog.url!r}, {show_url(self.engine.url)!r})"

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
        copied = (*REMOTE_COLUMNS, "deleted_at", "deleted_reason")
        with self.engine.begin() as connection:
            for rows in pages(self.catalog.engine, select(remote), remote.c.id):
                added, changed = [], []
                for row in rows:
                    values = {name: row._mapping[name] for name in copied}
                    seen.add(row.key)
                    old = known.get(row.key)
                    # The catalogue's own soft deletions (a vanished file) are copied with their reason.
                    remote_deleted = row.deleted_at is not None
                    if old is None:
                        added.append({**values, "local": {}})
                        if remote_deleted:
                            counts.deleted += 1
                        else:
                            counts.added += 1
                        continue
                    if old[:2] == (row.sha256, row.last_updated) and old[2] == remote_deleted:
                        counts.skipped += 1
                        continue
                    if remote_deleted and not old[2]:
                        counts.deleted += 1
                    elif old[2] and not remote_deleted:
                        counts.restored += 1
                    elif remote_deleted:
                        counts.skipped += 1
                    else:
                        counts.updated += 1
                    changed.append(values)
                if added:
                    connection.execute(insert(table), added)
                if changed:
                    connection.execute(
                        refresh,
                        [
                            {**{k: v for k, v in values.items() if k != "key"}, "match_key": values["key"]}
                            for values in changed
                        ],
                    )
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
            counts.deleted += len(gone)
            if counts.added or counts.updated or counts.deleted or counts.restored:
                self.store.set_in(connection, STATE_LAST_UPDATED, self._clock())
        return counts

    @property
    def state_last_updated(self) -> datetime.datetime | None:
        """When ``update()`` or a saved record last changed the local state, or None."""
        return self.store.get(STATE_LAST_UPDATED)

    # -- queries: find, find_one, count and dump come from RecordQueries ---------------
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
            "url": show_url(self.engine.url),
            "catalog": self.catalog.url,
            "records": records,
            "deleted": deleted,
            "deleted_reasons": deleted_reasons(self.engine, table),
            "changed_locally": changed,
            "store": dict(self.store),
        }

    def _save_record(self, record_id: int, changed: Mapping[str, Any], removed: set[str]) -> None:
        stamp = {"local_updated": to_db(self._clock())}
        with self.engine.begin() as connection:
            save_fields(connection, self.table, "local", record_id, changed, removed, stamp)
            self.store.set_in(connection, STATE_LAST_UPDATED, self._clock())

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
