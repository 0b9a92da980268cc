"""MemoryStore: the in-process tier, a dict read without a lock and evicted by CLOCK."""

from __future__ import annotations

import marshal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from datapipelines.forks import reset_in_children
from datapipelines.keys import MEMO_ENTRY_BYTES, key_for, on_keys_changed
from datapipelines.store import MISSING, Store

_FOREVER = float("inf")
_dumps = marshal.dumps
# Version 2 of marshal writes every str alike (no interning flag, no back-references), so the
# bytes depend on the query's values and their types only; it is also the cheapest to write.
_MARSHAL_VERSION = 2


class _Entry:
    """One cached value. Only ``referenced`` ever changes: a new value is a new entry."""

    __slots__ = ("key", "value", "deadline", "written_at", "size", "referenced")

    def __init__(self, key: str, value: Any, deadline: float, written_at: float, size: int) -> None:
        self.key = key  # the very object the dict holds: remembered queries share it, not a copy
        self.value = value
        self.deadline = deadline
        self.written_at = written_at
        self.size = size
        self.referenced = False


class MemoryStore(Store):
    """A bounded cache of live Python objects, evicting the least recently used first.

    Values are kept as they are, not copied: callers must not mutate what they
    get back. Bounded by ``maxsize`` entries, or by bytes when ``getsizeof`` is
    given (then ``maxsize`` is a byte budget). ``clock`` returns seconds and is
    there for tests. Safe to share between threads.

    Reads take no lock. The entries live in an ordered dict whose order only
    writers change, under the lock; a read is one ``dict.get`` (atomic in
    CPython, with or without the GIL) and sets the entry's reference bit. A
    writer that needs room evicts by CLOCK (second chance): the oldest entry
    goes unless it was read since it was last passed over, in which case it
    moves to the back with its bit cleared. That approximates LRU, as
    cachetools' LRUCache keeps it, without reordering (or locking) on every hit.
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
        self._getsizeof = getsizeof
        self._start_empty()
        self._lock = threading.Lock()
        self._clock = clock
        self.maxsize = maxsize
        reset_in_children(self)

    def _start_empty(self) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._get = self._entries.get
        self._size = 0  # entries, or bytes with getsizeof
        # type -> marshal bytes of a query -> its key, for the queries this store has answered.
        # Sized with the store rather than the process-wide key memo, so a hit costs the same
        # with 10^6 keys in use as with 10^3; started over when it outgrows twice the entries.
        self._aliases: dict[Any, dict[bytes, str]] = {}  # a plain dict: a defaultdict subscript is slower
        self._aliased = 0
        # The dict's own clear: a bound method of the store would keep the store alive.
        on_keys_changed(self, self._aliases.clear)

    def _after_fork(self) -> None:
        # A child keeps what the parent cached, unless a parent thread was changing it
        # at that instant: then it may be half-changed, and the child starts empty.
        if self._lock.locked():
            self._start_empty()
        self._lock = threading.Lock()

    # Lives in this process: other processes' invalidations must reach it.
    in_process = True

    def __repr__(self) -> str:
        return f"MemoryStore(maxsize={self.maxsize})"

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, type_: Any, query: Mapping[str, Any]) -> Any:
        # The pipeline's hit path: kept flat on purpose (no helper calls, no lock). marshal
        # writes exact built-in types only, each tagged, so equal bytes mean the same key
        # (see keys.key_for); anything it cannot write takes the general path.
        try:
            key = self._aliases[type_].get(
                _dumps(query if type(query) is dict else dict(query), _MARSHAL_VERSION)
            )
        except (KeyError, ValueError, TypeError):  # a type not read yet; a query marshal cannot write
            key = None
        if key is None:
            return self._lookup_unaliased(type_, query)
        entry = self._get(key)
        if entry is None:
            return MISSING
        if entry.deadline is not _FOREVER and entry.deadline <= self._clock():
            self._expire(key, entry)
            return MISSING
        entry.referenced = True
        return entry.value

    def _lookup_unaliased(self, type_: Any, query: Mapping[str, Any]) -> Any:
        # First read of this query's bytes: key it, and remember the bytes if a value is there.
        key = key_for(type_, query)
        value = self._load(key, type_)
        if value is not MISSING:
            self._remember_aliases(type_, [(query, key)])
        return value

    def _remember_aliases(self, type_: Any, pairs: Sequence[tuple[Mapping[str, Any], str]]) -> None:
        learned = {}
        for query, key in pairs:
            try:
                data = _dumps(query if type(query) is dict else dict(query), _MARSHAL_VERSION)
            except (ValueError, TypeError):
                continue
            entry = self._get(key)
            if entry is not None and len(data) <= MEMO_ENTRY_BYTES:  # bigger: cheaper to key again
                learned[data] = entry.key
        with self._lock:
            # Bounded by what the store holds (maxsize may be a byte budget), with room for churn.
            if self._aliased + len(learned) > 2 * len(self._entries) + 1024:
                self._forget_aliases()
            self._aliases.setdefault(type_, {}).update(learned)
            self._aliased += len(learned)

    def _forget_aliases(self) -> None:
        self._aliases.clear()
        self._aliased = 0

    def lookup_many_entries(self, type_: Any, queries: Sequence[Mapping[str, Any]]) -> list[Any]:
        # The batch hit path: keys from the remembered bytes where known, then one pass.
        self._check_type(type_)
        aliased = self._aliases.get(type_, {}).get
        keys, fresh = [], []
        for index, query in enumerate(queries):
            try:
                key = aliased(_dumps(query if type(query) is dict else dict(query), _MARSHAL_VERSION))
            except (ValueError, TypeError):
                key = None
            if key is None:
                key = key_for(type_, query)
                fresh.append(index)
            keys.append(key)
        found = self._load_many_entries(keys, type_)
        learned = [(queries[i], keys[i]) for i in fresh if found[i] is not MISSING]
        if learned:
            self._remember_aliases(type_, learned)
        return found

    def store_many(
        self, type_: Any, entries: Sequence[tuple[Mapping[str, Any], Any]], *, seconds: Any = MISSING
    ) -> None:
        super().store_many(type_, entries, seconds=seconds)
        # Remember how these queries key (the process-wide memo has them now), so that
        # their first reads compute no key either.
        self._remember_aliases(type_, [(query, key_for(type_, query)) for query, _ in entries])

    def lookup_fresh(self, type_: Any, query: Mapping[str, Any], max_age: float) -> Any:
        # The hit path of a type with a Policy: lookup's remembered keys, plus the age check.
        try:
            key = self._aliases[type_].get(
                _dumps(query if type(query) is dict else dict(query), _MARSHAL_VERSION)
            )
        except (KeyError, ValueError, TypeError):
            key = None
        if key is None:
            key = key_for(type_, query)
            entry = self._get(key)
            if entry is not None:
                self._remember_aliases(type_, [(query, key)])
        else:
            entry = self._get(key)
        if entry is None:
            return MISSING
        now = self._clock()
        if entry.deadline <= now:
            self._expire(key, entry)
            return MISSING
        entry.referenced = True
        return MISSING if now - entry.written_at >= max_age else entry.value

    def _expire(self, key: str, entry: _Entry) -> None:
        # Only this entry: a writer may have put a fresh value under the key since it was read.
        with self._lock:
            if self._get(key) is entry:
                del self._entries[key]
                self._size -= entry.size

    def _load_entry(self, key: str, type_: Any) -> Any:
        entry = self._get(key)
        if entry is None:
            return MISSING
        now = self._clock()
        if entry.deadline <= now:
            self._expire(key, entry)
            return MISSING
        entry.referenced = True
        return entry.value, now - entry.written_at

    def _load(self, key: str, type_: Any) -> Any:
        entry = self._load_entry(key, type_)
        return MISSING if entry is MISSING else entry[0]

    def _load_many_entries(self, keys: Sequence[str], type_: Any) -> list[Any]:
        # One pass and one clock reading for the whole batch, no lock unless something expired.
        get, now = self._get, self._clock()
        found: list[Any] = []
        expired = []
        for key in keys:
            entry = get(key)
            if entry is None:
                found.append(MISSING)
            elif entry.deadline <= now:
                expired.append((key, entry))
                found.append(MISSING)
            else:
                entry.referenced = True
                found.append((entry.value, now - entry.written_at))
        for key, entry in expired:
            self._expire(key, entry)
        return found

    def _save_many(self, entries: Sequence[tuple[str, Any]], seconds: float | None, type_: Any) -> None:
        now = self._clock()
        deadline = _FOREVER if seconds is None else now + seconds
        sizeof = self._getsizeof
        with self._lock:
            for key, value in entries:
                self._insert(key, _Entry(key, value, deadline, now, 1 if sizeof is None else sizeof(value)))

    def _insert(self, key: str, entry: _Entry) -> None:
        # Called with the lock held.
        cache = self._entries
        old = cache.pop(key, None)
        if old is not None:
            self._size -= old.size
        if entry.size > self.maxsize:
            return  # larger than the whole budget: it cannot be cached at all
        while cache and self._size + entry.size > self.maxsize:
            self._evict_one()
        cache[key] = entry
        self._size += entry.size

    def _evict_one(self) -> None:
        # CLOCK: the oldest entry goes, unless it was read since the hand last passed it.
        cache = self._entries
        for key, entry in cache.items():
            if entry.referenced:
                entry.referenced = False
                cache.move_to_end(key)
                return  # the loop's view changed; the caller asks again
            del cache[key]
            self._size -= entry.size
            return

    def _delete_many(self, keys: Sequence[str]) -> int:
        removed = 0
        with self._lock:
            for key in keys:
                entry = self._entries.pop(key, None)
                if entry is not None:
                    self._size -= entry.size
                    removed += 1
        return removed

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._forget_aliases()
            self._size = 0
