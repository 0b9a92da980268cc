"""DiskStore: the on-disk tier, on diskcache (SQLite plus files), shared by processes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import diskcache

from .encoded import EncodedStore
from .serializers import Serializer

_MODE_RAW = diskcache.core.MODE_RAW
_MODE_PICKLE = diskcache.core.MODE_PICKLE


class _BytesOnlyDisk(diskcache.Disk):
    """diskcache's Disk that never unpickles: a pickled value in the directory reads as garbage."""

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode == _MODE_RAW and value.__class__ is bytes:
            return value  # the common case, answered without a second call
        if mode == _MODE_PICKLE:
            return "<a pickle, left unread>"
        return super().fetch(mode, filename, value, read)


class DiskStore(EncodedStore):
    """A directory of serialized values, safe for several processes and threads at once.

    Values go through ``serializer`` (see :mod:`datapipelines.sinks.serializers`;
    the default is JSON, or HMAC-signed pickle when ``secret`` or env
    ``DATAPIPELINES_SECRET`` is set). ``size_limit`` bounds the directory in bytes;
    diskcache evicts the least recently stored entries beyond it. Expired entries
    are never returned: each carries its deadline, checked against ``clock``
    (wall-clock seconds, injectable for tests), and diskcache's own expiry evicts them.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        expirations: Mapping[Any, Any] | None = None,
        serializer: Serializer | str | None = None,
        secret: str | bytes | None = None,
        default_expiry: Any = None,
        types: Iterable[Any] | None = None,
        size_limit: int = 2**30,
        timeout: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            serializer=serializer, secret=secret, clock=clock,
            types=types, expirations=expirations, default_expiry=default_expiry,
        )  # fmt: skip
        self.directory = os.fspath(directory)
        self._cache = diskcache.Cache(
            self.directory, timeout=timeout, disk=_BytesOnlyDisk, size_limit=size_limit
        )

    def __repr__(self) -> str:
        return f"DiskStore({self.directory!r})"

    def _drop(self, key: str) -> None:
        self._cache.delete(key, retry=True)

    def _fetch(self, key: str) -> Any:
        return self._cache.get(key, retry=True)

    def _fetch_many(self, keys: Sequence[str]) -> list[Any]:
        get = self._cache.get
        with self._cache.transact(retry=True):
            return [get(key, retry=True) for key in keys]

    def _save_many(self, entries: Sequence[tuple[str, Any]], seconds: float | None, type_: Any) -> None:
        now = self._clock()
        # Serialize everything first: a value that cannot be stored fails the call before any write.
        blobs = [(key, self._codec.encode(value, type_, key, now, seconds)) for key, value in entries]
        put = self._cache.set
        with self._cache.transact(retry=True):
            for key, blob in blobs:
                put(key, blob, expire=seconds, retry=True)

    def _delete_many(self, keys: Sequence[str]) -> int:
        delete = self._cache.delete
        with self._cache.transact(retry=True):
            return sum(delete(key, retry=True) for key in keys)

    def clear(self) -> None:
        self._cache.clear(retry=True)

    def close(self) -> None:
        """Close this process's database connections; the store reopens them on next use."""
        self._cache.close()
