"""DiskStore: the on-disk tier, on diskcache (SQLite plus files), shared by processes."""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import diskcache

from datapipelines.errors import DataPipelinesError
from datapipelines.forks import reset_in_children

from .encoded import EncodedStore
from .serializers import Serializer

LOGGER = logging.getLogger(__name__)
_MODE_RAW = diskcache.core.MODE_RAW
_MODE_PICKLE = diskcache.core.MODE_PICKLE
# What a database that cannot be used raises: SQLite's errors, diskcache's give-up on a lock, the OS.
_DATABASE_ERRORS = (sqlite3.Error, diskcache.Timeout, OSError)
F = TypeVar("F", bound=Callable[..., Any])
# Caches a forked child inherited from its parent: kept alive so they are never closed here.
_INHERITED: list[diskcache.Cache] = []


class DiskStoreError(DataPipelinesError, OSError):
    """A DiskStore's directory cannot be opened, read or written; the message names it."""


def _why(directory: str, error: BaseException) -> str:
    """What went wrong with ``directory``, in words (a read-only filesystem is said so)."""
    existing = os.path.abspath(directory)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)  # a directory not made yet lives on its parent's filesystem
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return "the filesystem is read-only"
    except (OSError, AttributeError):
        pass  # AttributeError: no statvfs (Windows)
    if isinstance(error, diskcache.Timeout):
        return "the database stayed locked, or cannot be written"
    return f"{type(error).__name__}: {error}"


def _named_errors(method: F) -> F:
    """A backend call: first the directory check (on its schedule), then ``method``, whose
    failure becomes a DiskStoreError naming the directory and forces the next check."""

    @functools.wraps(method)
    def guarded(self: DiskStore, *args: Any) -> Any:
        if self._lost is not None or time.monotonic() >= self._next_check:
            self._check_directory()  # tested here, not called, on the hit path: a call per hit costs
        try:
            return method(self, *args)
        except _DATABASE_ERRORS as error:
            self._next_check = 0.0
            raise DiskStoreError(f"{self!r} failed: {_why(self.directory, error)}") from error

    return guarded  # type: ignore[return-value]


class _BytesOnlyDisk(diskcache.Disk):
    """diskcache's Disk that only ever returns bytes, and never unpickles.

    A value another program stored as something else (a pickle, text, a number)
    reads as bytes no entry starts with: a damaged entry, never an unpickling.
    """

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode == _MODE_RAW and value.__class__ is bytes:
            return value  # the common case, answered without a second call
        if mode == _MODE_PICKLE:
            return b"<a pickle, left unread>"
        found = super().fetch(mode, filename, value, read)
        return found if found.__class__ is bytes else f"<{type(found).__name__}, not bytes>".encode()


class DiskStore(EncodedStore):
    """A directory of serialized values, safe for several processes and threads at once.

    Values go through ``serializer`` (see :mod:`datapipelines.sinks.serializers`;
    the default is MessagePack into the requested type, or HMAC-signed pickle when
    ``secret`` or env ``DATAPIPELINES_SECRET`` is set). ``size_limit`` bounds the directory in bytes;
    diskcache evicts the least recently stored entries beyond it. Expired entries
    are never returned: each carries its deadline, checked against ``clock``
    (wall-clock seconds, injectable for tests), and diskcache's own expiry evicts them.

    A call waits at most ``timeout`` seconds for another writer's lock, then
    fails; so does a database on a read-only filesystem, at once. Failures raise
    :class:`DiskStoreError` naming the directory (in a pipeline: counted, and the
    tier's breaker skips it). Every ``check_every`` seconds, and after any
    failure, the store checks that its database file is still the one it opened;
    if the directory was removed or replaced, it opens the database found there
    now (creating it), so it never writes into a file nobody else can see.
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
        check_every: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            serializer=serializer, secret=secret, clock=clock,
            types=types, expirations=expirations, default_expiry=default_expiry,
        )  # fmt: skip
        self.directory = os.fspath(directory)
        self._options = {"timeout": timeout, "disk": _BytesOnlyDisk, "size_limit": size_limit}
        self._check_every = check_every
        self._reopen_lock = threading.Lock()
        self._lost: DiskStoreError | None = None
        self._cache, self._identity = self._open()
        self._next_check = time.monotonic() + check_every
        reset_in_children(self)

    def _after_fork(self) -> None:
        # An SQLite connection must not cross fork(): the child opens its own on next use.
        # The inherited one is kept, never used nor closed (closing could touch the parent's files).
        _INHERITED.append(self._cache)
        self._reopen_lock = threading.Lock()
        self._identity, self._next_check = (-1, -1), 0.0  # matches no file: reopen

    def __repr__(self) -> str:
        return f"DiskStore({self.directory!r})"

    def _open(self) -> tuple[diskcache.Cache, tuple[int, int] | None]:
        """diskcache on the directory, and the identity of its database file."""
        try:
            cache = diskcache.Cache(self.directory, **self._options)
        except _DATABASE_ERRORS as error:
            raise DiskStoreError(
                f"DiskStore cannot open {self.directory!r}: {_why(self.directory, error)}"
            ) from error
        return cache, self._database_identity()

    def _database_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the database file now in the directory; None if there is none."""
        try:
            found = os.stat(os.path.join(self.directory, diskcache.core.DBNAME))
        except OSError:
            return None
        return found.st_dev, found.st_ino

    def _check_directory(self) -> None:
        """Reopen the database if its file is no longer the one this store opened.

        Raises DiskStoreError while it cannot be reopened, rather than write where
        nobody else can see.
        """
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_every
            if self._database_identity() != self._identity:
                self._reopen()
        if self._lost is not None:
            raise self._lost

    def _reopen(self) -> None:
        with self._reopen_lock:
            if self._database_identity() == self._identity and self._lost is None:
                return  # another thread reopened it meanwhile
            stale = self._cache
            try:
                self._cache, self._identity = self._open()
            except DiskStoreError as error:
                if self._lost is None:
                    LOGGER.warning("%r lost its database and cannot reopen it: %s", self, error)
                self._lost = error
                return
            self._lost = None
            if stale in _INHERITED:
                return
            LOGGER.warning("%r found its database removed or replaced; reopened it", self)
        stale.close()

    # -- the five byte-level methods ----------------------------------------------------------------
    @_named_errors
    def fetch(self, key: str) -> bytes | None:
        return self._cache.get(key)  # type: ignore[no-any-return]

    @_named_errors
    def fetch_many(self, keys: Sequence[str]) -> list[bytes | None]:
        cache = self._cache
        with cache.transact():
            return [cache.get(key) for key in keys]

    @_named_errors
    def save_many(self, entries: Sequence[tuple[str, bytes]], seconds: float | None) -> None:
        cache = self._cache
        with cache.transact():
            for key, blob in entries:
                cache.set(key, blob, expire=seconds)

    @_named_errors
    def delete_many(self, keys: Sequence[str]) -> int:
        cache = self._cache
        with cache.transact():
            return sum(cache.delete(key) for key in keys)

    @_named_errors
    def clear(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        """Close this thread's database connection; the store reopens it on next use."""
        if self._cache not in _INHERITED:
            self._cache.close()
