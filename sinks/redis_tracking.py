"""The client-side cache of a RedisStore: decoded copies in this process, dropped when Redis says so.

Redis 6+ tracks keys for a client (``CLIENT TRACKING``) and pushes an
``invalidate`` message when one of them changes. A store built with
``client_side=True`` opens one RESP3 connection of its own that asks for every
change under its namespace (``BCAST PREFIX <namespace>:``, so the pool's
connections need no tracking state and a reconnect loses nothing), and keeps
the values it read, decoded, in a :class:`~datapipelines.sinks.memory.MemoryStore`:
a repeated hit costs a memory hit, with no round trip and no decoding.

A copy goes when another client changes or deletes the key, when this store
writes or deletes it (at once: a read after a write sees the write), when the
database is flushed, and at its own deadline. All copies go when the tracking
connection is lost, or stays silent past the store's socket timeout twice (a
PING unanswered): until it is back, reads go to Redis as if there were no
client cache, so a dead or partitioned server is never hidden behind copies
that no longer hear of changes.

redis-py's own client cache (``cache_config``, 5.1+) keeps raw replies, takes
the pool's lock and polls the socket for invalidations on every hit, and the
store would still decode each time; this one answers a hit from the memory tier's
lock-free path.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import redis

from datapipelines.forks import reset_in_children
from datapipelines.keys import key_for
from datapipelines.store import MISSING

from .memory import MemoryStore, _Entry

# The frame Codec writes: magic, then (deadline, written at). A copy must die at the entry's deadline.
from .serializers import _MAGIC, _STAMPS

LOGGER = logging.getLogger(__name__)

_RECONNECT_FIRST, _RECONNECT_MOST = 0.05, 2.0  # seconds between attempts to track again, doubling
_HEARTBEAT = 2.0  # seconds, for a store whose reads have no socket timeout


class _Copies(MemoryStore):
    """A MemoryStore whose entries carry the Redis entry's own deadline and write time.

    So a copy dies when the entry does, and a policy reads the entry's age, not
    the copy's; every read path is the memory tier's own.
    """

    def keep(self, key: str, value: Any, blob: bytes, written_at: float) -> None:
        """Hold ``value``, decoded from ``blob``, until the deadline written in the blob."""
        deadline = _STAMPS.unpack_from(blob, len(_MAGIC))[0]
        with self._lock:
            self._insert(key, _Entry(value, deadline, written_at))


class ClientSideCache:
    """Decoded copies of what ``store`` read, at most ``maxsize``, kept while Redis tracks them.

    ``heartbeat`` (seconds; None: 2) is how long the tracking connection may stay
    silent before it is pinged; a ping unanswered for as long again counts as a
    lost connection. Safe to share between threads; a forked child starts empty and
    tracks on its own connection.
    """

    def __init__(self, store: Any, maxsize: int, heartbeat: float | None) -> None:
        if maxsize <= 0:
            raise ValueError(f"client_side_maxsize must be positive, got {maxsize!r}")
        self._store = store
        self._prefix = store.namespace + ":"
        self._maxsize = maxsize
        self._heartbeat = _HEARTBEAT if heartbeat is None else heartbeat
        self._closed = threading.Event()
        self._start()
        reset_in_children(self)

    def _start(self) -> None:
        self._copies = _Copies(self._maxsize, clock=self._store._clock)  # the entries' clock: wall time
        self._lock = threading.Lock()
        self._tracking = False  # whether Redis tells us of every change right now
        # Bumped whenever copies may have missed a change (tracking lost or regained, a flush):
        # a read that began under another epoch keeps nothing.
        self._epoch = 0
        self._reading: dict[str, int] = {}  # key -> reads of it under way
        self._spoiled: set[str] = set()  # keys changed while a read of them was under way
        self.invalidations = 0  # messages Redis pushed on the tracking connection
        self._connection: Any = None
        self._listener = threading.Thread(target=self._listen, name=f"{self._store!r} tracking", daemon=True)
        self._listener.start()

    def _after_fork(self) -> None:
        # The child has no listener thread and shares the parent's socket: start over, never touching it.
        closed, self._closed = self._closed.is_set(), threading.Event()
        if closed:
            self._closed.set()
        self._start()

    def __len__(self) -> int:
        return len(self._copies)

    @property
    def tracking(self) -> bool:
        """Whether Redis is tracking this process's copies right now (else reads go to Redis)."""
        return self._tracking

    # -- reads -----------------------------------------------------------------------
    def lookup(self, type_: Any, query: Mapping[str, Any]) -> Any:
        value = self._copies.lookup(type_, query)
        if value is MISSING:
            entry = self._read_one(type_, query)
            return MISSING if entry is MISSING else entry[0]
        return value

    def lookup_entry(self, type_: Any, query: Mapping[str, Any]) -> Any:
        entry = self._copies.lookup_entry(type_, query)
        return self._read_one(type_, query) if entry is MISSING else entry

    def lookup_fresh(self, type_: Any, query: Mapping[str, Any], max_age: float) -> Any:
        value = self._copies.lookup_fresh(type_, query, max_age)
        if value is not MISSING:
            return value
        # No copy, or one too old: then Redis holds that same entry (a change would have dropped it).
        entry = self.lookup_entry(type_, query)
        return MISSING if entry is MISSING or entry[1] >= max_age else entry[0]

    def lookup_many_entries(self, type_: Any, queries: Sequence[Mapping[str, Any]]) -> list[Any]:
        self._store._check_type(type_)
        found = self._copies.lookup_many_entries(type_, queries)
        missed = [index for index, entry in enumerate(found) if entry is MISSING]
        if missed:
            read = self._read([key_for(type_, queries[index]) for index in missed], type_)
            for index, entry in zip(missed, read, strict=True):
                found[index] = entry
        return found

    def _read_one(self, type_: Any, query: Mapping[str, Any]) -> Any:
        return self._read([key_for(type_, query)], type_)[0]

    def _read(self, keys: Sequence[str], type_: Any) -> list[Any]:
        """``(value, age)`` (or MISSING) under ``keys`` from Redis, kept as copies if still current."""
        store = self._store
        with self._lock:
            epoch = self._epoch if self._tracking else None
            for key in keys:
                self._reading[key] = self._reading.get(key, 0) + 1
        decoded: list[Any] = []  # (value, written_at) or MISSING
        try:
            blobs = [store.fetch(keys[0])] if len(keys) == 1 else store.fetch_many(keys)
            now = store._clock()
            decoded = [store._decoded(key, blob, type_, now) for key, blob in zip(keys, blobs, strict=True)]
        finally:
            # Under the lock, so that no invalidation falls between these checks and the copy.
            with self._lock:
                current = epoch is not None and epoch == self._epoch
                unchanged = [key not in self._spoiled for key in keys]
                for key in keys:
                    self._done_reading(key)
                if current and decoded:
                    for key, blob, entry, keep in zip(keys, blobs, decoded, unchanged, strict=True):
                        if keep and entry is not MISSING:
                            self._copies.keep(key, entry[0], blob, entry[1])
        return [MISSING if e is MISSING else (e[0], max(0.0, now - e[1])) for e in decoded]

    def _done_reading(self, key: str) -> None:
        # Called with the lock held.
        left = self._reading[key] - 1
        if left:
            self._reading[key] = left
        else:
            del self._reading[key]
            self._spoiled.discard(key)

    # -- changes -----------------------------------------------------------------------
    def forget(self, keys: Sequence[str]) -> None:
        """Drop the copies of ``keys`` (this store wrote or deleted them) and of reads under way."""
        with self._lock:
            self._spoil(keys)

    def forget_all(self) -> None:
        """Drop every copy and keep nothing that a read under way brings back."""
        with self._lock:
            self._epoch += 1
            self._copies.clear()

    def _spoil(self, keys: Sequence[str]) -> None:
        # Called with the lock held.
        reading = self._reading
        self._spoiled.update(key for key in keys if key in reading)
        self._copies._delete_many(keys)

    def _on_invalidate(self, message: Sequence[Any]) -> None:
        # ["invalidate", [raw keys]], or ["invalidate", None] when the database was flushed.
        raw_keys = message[1]
        start = len(self._prefix)
        keys = None if raw_keys is None else [raw.decode("utf-8", "replace")[start:] for raw in raw_keys]
        with self._lock:
            self.invalidations += 1
            if keys is None:
                self._epoch += 1
                self._copies.clear()
            else:
                self._spoil(keys)

    # -- the tracking connection ---------------------------------------------------------------
    def _listen(self) -> None:
        pause = _RECONNECT_FIRST
        while not self._closed.is_set():
            try:
                connection = self._track()
            except (redis.ConnectionError, redis.TimeoutError, OSError):  # not there yet: try again
                self._closed.wait(pause)
                pause = min(2 * pause, _RECONNECT_MOST)
                continue
            except Exception as error:  # the server refuses tracking (Redis < 6), or cannot speak RESP3
                LOGGER.error("%r keeps no client-side cache, reading from Redis only: %s", self._store, error)
                return
            pause = _RECONNECT_FIRST
            try:
                self._follow(connection)
            except Exception as error:  # whatever ends the connection ends every copy with it
                if not self._closed.is_set():
                    LOGGER.warning(
                        "%r lost its tracking connection (%s: %s): dropped its client-side copies, "
                        "reading from Redis until it is back", self._store, type(error).__name__, error,
                    )  # fmt: skip
            finally:
                self._untrack(connection)

    def _track(self) -> Any:
        """A RESP3 connection on which Redis pushes every change under the namespace."""
        pool = self._store.client.connection_pool
        connection = pool.connection_class(**{**pool.connection_kwargs, "protocol": 3})
        try:
            connection.connect()
            # The push handler lives on the parser, as redis-py's own client cache sets it.
            connection._parser.set_invalidation_push_handler(self._on_invalidate)
            connection.send_command("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", self._prefix)
            connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        with self._lock:
            self._connection = connection
            self._epoch += 1  # reads begun before tracking keep nothing: changes before it went unheard
            self._tracking = True
        if self._closed.is_set():  # close() ran before the connection was published
            _wake(connection)
        return connection

    def _follow(self, connection: Any) -> None:
        """Handle pushes until the connection fails or ``close``; ping it when it stays silent."""
        pinged = False
        while not self._closed.is_set():
            try:
                connection.read_response(
                    push_request=True, timeout=self._heartbeat, disconnect_on_error=False
                )
            except redis.TimeoutError:
                if pinged:
                    raise redis.ConnectionError(f"no answer to a PING within {self._heartbeat}s") from None
                connection.send_command("PING")
                pinged = True
                continue
            pinged = False

    def _untrack(self, connection: Any) -> None:
        with self._lock:
            self._tracking = False
            self._connection = None
            self._epoch += 1
            self._copies.clear()
        connection.disconnect()

    def close(self) -> None:
        """Stop tracking and drop every copy; reads go to Redis from now on."""
        self._closed.set()
        with self._lock:
            connection = self._connection
        if connection is not None:
            _wake(connection)
        if self._listener is not threading.current_thread():
            self._listener.join(self._heartbeat + 1.0)
        self.forget_all()


def _wake(connection: Any) -> None:
    """End the listener's read at once: its socket reads end-of-file, and the listener closes it."""
    # Not disconnect(): that drops the parser's buffer under the reading thread's feet.
    sock = getattr(connection, "_sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
