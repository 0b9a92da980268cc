"""MemoryStore: the in-process tier, on cachetools."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cachetools import LRUCache

from datapipelines.forks import reset_in_children
from datapipelines.keys import key_for
from datapipelines.store import MISSING, Store

_FOREVER = float("inf")


class MemoryStore(Store):
    """A bounded LRU of live Python objects.

    Values are kept as they are, not copied: callers must not mutate what they
    get back. Bounded by ``maxsize`` entries, or by bytes when ``getsizeof`` is
    given (then ``maxsize`` is a byte budget). ``clock`` returns seconds and is
    there for tests. Safe to share between threads.
    """

    def __init__(
        self,
        maxsize: int = 10_000,
        *,
        expirations: Mapping[Any, Any] | None = None,
        default_expiry: Any = None,
        types: Iterable[Any] | None = None,
        getsizeof: Callable[[Any], int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(types=types, expirations=expirations, default_expiry=default_expiry)
        if maxsize <= 0:
            raise ValueError(f"MemoryStore maxsize must be positive, got {maxsize!r}")
        sizer = None
        if getsizeof is not None:
            # Entries are (value, deadline, written_at); weigh the value only.
            def sizer(entry: tuple[Any, float, float]) -> int:
                return getsizeof(entry[0])

        self._sizer = sizer
        self._cache: LRUCache[str, tuple[Any, float, float]] = LRUCache(maxsize, getsizeof=sizer)
        self._lock = threading.Lock()
        self._clock = clock
        self.maxsize = maxsize
        reset_in_children(self)

    def _after_fork(self) -> None:
        # A child keeps what the parent cached, unless a parent thread was changing it
        # at that instant: then it may be half-changed, and the child starts empty.
        if self._lock.locked():
            self._cache = LRUCache(self.maxsize, getsizeof=self._sizer)
        self._lock = threading.Lock()

    # Lives in this process: other processes' invalidations must reach it.
    in_process = True

    def __repr__(self) -> str:
        return f"MemoryStore(maxsize={self.maxsize})"

    def __len__(self) -> int:
        return len(self._cache)

    def lookup(self, type_: Any, query: Mapping[str, Any]) -> Any:
        # The pipeline's hit path: kept flat on purpose (no helper calls, no `with`).
        key = key_for(type_, query)
        lock = self._lock
        lock.acquire()
        try:
            value, deadline, _ = self._cache[key]
        except KeyError:
            return MISSING
        finally:
            lock.release()
        if deadline is not _FOREVER and deadline <= self._clock():
            self._delete_many([key])
            return MISSING
        return value

    def lookup_fresh(self, type_: Any, query: Mapping[str, Any], max_age: float) -> Any:
        # The hit path of a type with a Policy: like lookup, plus the age check.
        key = key_for(type_, query)
        lock = self._lock
        lock.acquire()
        try:
            value, deadline, written_at = self._cache[key]
        except KeyError:
            return MISSING
        finally:
            lock.release()
        now = self._clock()
        if now - written_at >= max_age or deadline <= now:
            return MISSING
        return value

    def _load_entry(self, key: str, type_: Any) -> Any:
        with self._lock:
            entry = self._cache.get(key)
        if entry is None:
            return MISSING
        value, deadline, written_at = entry
        now = self._clock()
        if deadline <= now:
            self._delete_many([key])
            return MISSING
        return value, now - written_at

    def _load(self, key: str, type_: Any) -> Any:
        entry = self._load_entry(key, type_)
        return MISSING if entry is MISSING else entry[0]

    def _load_many_entries(self, keys: Sequence[str], type_: Any) -> list[Any]:
        # One lock and one clock reading for the whole batch.
        found: list[Any] = []
        with self._lock:
            cache, now = self._cache, self._clock()
            for key in keys:
                entry = cache.get(key)
                if entry is not None and entry[1] <= now:
                    del cache[key]
                    entry = None
                found.append(MISSING if entry is None else (entry[0], now - entry[2]))
        return found

    def _save_many(self, entries: Sequence[tuple[str, Any]], seconds: float | None, type_: Any) -> None:
        now = self._clock()
        deadline = _FOREVER if seconds is None else now + seconds
        with self._lock:
            for key, value in entries:
                try:
                    self._cache[key] = (value, deadline, now)
                except ValueError:
                    # Larger than the whole byte budget: it cannot be cached at all.
                    self._cache.pop(key, None)

    def _delete_many(self, keys: Sequence[str]) -> int:
        with self._lock:
            return sum(self._cache.pop(key, MISSING) is not MISSING for key in keys)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()
