"""A typed key-value store beside the catalogue: ``catalog.store["n"] = 17`` reads back 17.

Values keep their type: int, float, bool, str, None and datetime. Keys are
non-empty strings without "/", so a store can always be written out one file
per key.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

from sqlalchemy import Engine, Table, delete, func, select
from sqlalchemy.engine import Connection

from ._db import CatalogError, to_db, upsert

_ENCODERS: dict[type, tuple[str, Callable[[Any], str | None]]] = {
    bool: ("bool", lambda v: "true" if v else "false"),
    int: ("int", str),
    float: ("float", repr),
    str: ("str", str),
    type(None): ("none", lambda v: None),
    datetime.datetime: ("datetime", lambda v: v.isoformat()),
}
_DECODERS: dict[str, Callable[[Any], Any]] = {
    "bool": lambda text: text == "true",
    "int": int,
    "float": float,
    "str": str,
    "none": lambda text: None,
    "datetime": datetime.datetime.fromisoformat,
}


def check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise CatalogError(f"Store keys are strings; got {type(key).__name__} {key!r}")
    if not key:
        raise CatalogError("Store keys cannot be empty")
    if "/" in key:
        raise CatalogError(f"Store key {key!r} contains '/'; use another separator, such as '.' or ':'")
    return key


class KeyValueStore(MutableMapping[str, Any]):
    """Typed values by key, in a table of the catalogue's (or local state's) database."""

    def __init__(self, engine: Engine, table: Table, clock: Callable[[], datetime.datetime]) -> None:
        self._engine = engine
        self._table = table
        self._clock = clock

    def __getitem__(self, key: str) -> Any:
        table = self._table
        with self._engine.connect() as connection:
            row = connection.execute(
                select(table.c.kind, table.c.value).where(table.c.key == check_key(key))
            ).first()
        if row is None:
            raise KeyError(key)
        return _DECODERS[row.kind](row.value)

    def __setitem__(self, key: str, value: Any) -> None:
        with self._engine.begin() as connection:
            self.set_in(connection, key, value)

    def set_in(self, connection: Connection, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` within the caller's transaction."""
        check_key(key)
        encoder = _ENCODERS.get(type(value))
        if encoder is None:
            raise CatalogError(
                f"Store key {key!r}: cannot store a {type(value).__name__}; "
                "values are int, float, bool, str, None or datetime"
            )
        kind, encode = encoder
        row = {"key": key, "kind": kind, "value": encode(value), "updated_at": to_db(self._clock())}
        upsert(connection, self._table, [row])

    def __delitem__(self, key: str) -> None:
        with self._engine.begin() as connection:
            gone = connection.execute(delete(self._table).where(self._table.c.key == check_key(key))).rowcount
        if not gone:
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        with self._engine.connect() as connection:
            keys = connection.execute(select(self._table.c.key).order_by(self._table.c.key)).scalars().all()
        return iter(keys)

    def __len__(self) -> int:
        with self._engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(self._table)).scalar_one())

    def touch(self, key: str) -> datetime.datetime:
        """Store the current time under ``key`` and return it."""
        now = self._clock()
        self[key] = now
        return now

    def __repr__(self) -> str:
        return f"KeyValueStore({dict(self.items())!r})"
