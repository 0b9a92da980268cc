"""The catalogue's diff log: which columns and fields of which record changed, and when.

Every write that changes a record (``record``, ``generate``, ``delete``, a
saved ``Record``) appends one entry per record in the same transaction, as
mmmeta appends a CSV of changed keys per ``generate``. A consumer asks
``catalog.changes(since=...)``; ``catalog.squash()`` folds the log into one
entry per record. Columns and fields are listed apart, so a field named like
a column (``type``, ``id``) is never mistaken for it.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Engine, Table, delete, insert, select
from sqlalchemy.engine import Connection

from ._db import from_db, to_db

ADDED, UPDATED, DELETED, RESTORED = "added", "updated", "deleted", "restored"
# The columns whose change is logged; id, key, type and last_updated never change on their own.
LOGGED_COLUMNS = ("query", "size", "sha256", "source", "retrieved_at", "deleted_at", "deleted_reason")


@dataclasses.dataclass(frozen=True)
class Change:
    """One entry of the log: ``action`` is added, updated, deleted (soft or not) or restored."""

    key: str
    type: str
    changed_at: datetime.datetime
    action: str
    columns: tuple[str, ...]
    fields: tuple[str, ...]


def difference(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The logged columns and the fields whose values differ between two versions of a row."""
    if old is None:
        return [name for name in LOGGED_COLUMNS if new.get(name) is not None], sorted(new["fields"])
    columns = [name for name in LOGGED_COLUMNS if name in new and old.get(name) != new[name]]
    before = old.get("fields") or {}
    after = new.get("fields", before)
    names = before.keys() | after.keys()
    fields = sorted(name for name in names if before.get(name, _GONE) != after.get(name, _GONE))
    return columns, fields


_GONE = object()


def entry(
    key: str, type_name: str, when: datetime.datetime, action: str,
    columns: Iterable[str] = (), fields: Iterable[str] = (),
) -> dict[str, Any]:  # fmt: skip
    return {
        "key": key, "type": type_name, "changed_at": when, "action": action,
        "columns": list(columns), "fields": list(fields),
    }  # fmt: skip


def append(connection: Connection, table: Table, entries: Sequence[dict[str, Any]]) -> None:
    if entries:
        connection.execute(insert(table), list(entries))


def read(engine: Engine, table: Table, since: datetime.datetime | None, key: str | None) -> list[Change]:
    """Entries at or after ``since`` (all without it), of one record if ``key`` is given, oldest first."""
    statement = select(table).order_by(table.c.changed_at, table.c.id)
    if since is not None:
        statement = statement.where(table.c.changed_at >= to_db(since))
    if key is not None:
        statement = statement.where(table.c.key == key)
    with engine.connect() as connection:
        rows = connection.execute(statement).all()
    return [
        Change(row.key, row.type, from_db(row.changed_at), row.action, tuple(row.columns), tuple(row.fields))  # type: ignore[arg-type]
        for row in rows
    ]


def squash(engine: Engine, table: Table, before: datetime.datetime | None) -> int:
    """Fold the entries older than ``before`` (all without it) into one per record; returns how many went.

    The folded entry carries the last time, every column and field named, and
    the action a consumer needs: deleted if the record ended deleted, added if
    it was added within the folded entries, else the last action.
    """
    statement = select(table).order_by(table.c.changed_at, table.c.id)
    if before is not None:
        statement = statement.where(table.c.changed_at < to_db(before))
    with engine.begin() as connection:
        rows = connection.execute(statement.with_for_update()).all()
        by_key: dict[str, list[Any]] = {}
        for row in rows:
            by_key.setdefault(row.key, []).append(row)
        folded = []
        for key, group in by_key.items():
            first, last = group[0].action, group[-1].action
            action = DELETED if last == DELETED else ADDED if first == ADDED else last
            columns = dict.fromkeys(name for row in group for name in row.columns)
            fields = dict.fromkeys(name for row in group for name in row.fields)
            folded.append(entry(key, group[-1].type, group[-1].changed_at, action, columns, sorted(fields)))
        ids = [row.id for row in rows]
        for start in range(0, len(ids), 500):
            connection.execute(delete(table).where(table.c.id.in_(ids[start : start + 500])))
        append(connection, table, folded)
    return len(rows) - len(folded)
