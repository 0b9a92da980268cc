"""MemoryStore: the in-process tier, a dict read without a lock and evicted by CLOCK."""

from __future__ import annotations

import marshal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import Any

from datapipelines.forks import reset_in_children
from datapipelines.keys import MEMO_ENTRY_BYTES, key_for, on_keys_changed
from datapipelines.store import MISSING, Store

_FOREVER = float("inf")
_GONE = -_FOREVER  # the deadline of an entry that left the store: always past
_dumps = marshal.dumps
# Version 2 of marshal writes every str alike (no interning flag, no back-references), so the
# bytes depend on the query's values and their types only; it is also the cheapest to write.
_MARSHAL_VERSION = 2


class _Entry:
    """One cached value. A new value is a new entry; ``referenced`` and the remembered query change.

    An entry that leaves the store (replaced, evicted, deleted, expired, cleared) gets the
    deadline ``_GONE``, so a remembered query that still points at it reads as a miss.
    """

    # What a hit reads comes first, next to the object's header, which the hit touches anyway.
    __slots__ = ("value", "deadline", "referenced", "written_at", "alias", "aliases")
    size = 1  # what an entry counts for in a store bounded by count

    def __init__(self, value: Any, deadline: float, written_at: float) -> None:
        self.value = value
        self.deadline = deadline
        self.referenced = False
        self.written_at = written_at
        # The form (see _form) of the query last remembered for this entry, and the table
        # holding it: so the entry takes its remembered query along when it leaves.
        self.alias: Any = None
        self.aliases: dict[Any, _Entry] | None = None


class _SizedEntry(_Entry):
    """An entry of a store bounded by bytes: it carries its measured size."""

    __slots__ = ("size",)

    def __init__(self, value: Any, deadline: float, written_at: float, size: int) -> None:
        super().__init__(value, deadline, written_at)
        self.size = size


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
        # A subclass that reimplements the batch read primitive (to count, pause or fail reads)
        # gets every batch through it, remembered queries or not.
        self._batch_reads_overridden = type(self)._load_many_entries is not MemoryStore._load_many_entries
        reset_in_children(self)

    def _start_empty(self) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._get = self._entries.get
        self._size = 0  # entries, or bytes with getsizeof
        # type -> field -> value -> entry, for the queries this store has answered or stored:
        # a hit is one lookup here, with no key to compute (see _form). Sized with the store
        # rather than the process-wide key memo, so a hit costs the same with 10^6 keys in use
        # as with 10^3; started over when it outgrows twice the entries.
        self._aliases: dict[
            Any, dict[str | None, dict[Any, _Entry]]
        ] = {}  # plain dicts: a defaultdict is slower
        self._aliased = 0
        # Not a bound method of the store: that would keep the store alive.
        on_keys_changed(self, partial(_forget_tables, self._aliases))

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
        # The pipeline's hit path: _form and _remembered written out (a call costs a tenth
        # of a hit), no lock.
        try:
            if type(query) is dict and len(query) == 1:
                [(name, value)] = query.items()
                if (type(value) is str or type(value) is int) and type(name) is str:
                    entry = self._aliases[type_][name].get(value)
                else:
                    entry = self._aliases[type_][None].get(_dumps(query, _MARSHAL_VERSION))
            else:
                entry = self._aliases[type_][None].get(
                    _dumps(query if type(query) is dict else dict(query), _MARSHAL_VERSION)
                )
        except (KeyError, ValueError, TypeError):  # nothing remembered yet; a query marshal cannot write
            entry = None
        if entry is not None:
            deadline = entry.deadline
            if deadline is _FOREVER or deadline > self._clock():
                entry.referenced = True
                return entry.value
        # Not remembered, expired, or gone: the key decides.
        found = self._entry_by_key(type_, query)
        return MISSING if found is MISSING else found[0]

    def lookup_entry(self, type_: Any, query: Mapping[str, Any]) -> Any:
        # The hit path that also tells the age (the pipeline's sampled hits, a Policy's misses).
        entry = self._remembered(type_, query)
        if entry is not None:
            now = self._clock()
            if entry.deadline > now:
                entry.referenced = True
                return entry.value, now - entry.written_at
        return self._entry_by_key(type_, query)

    def lookup_fresh(self, type_: Any, query: Mapping[str, Any], max_age: float) -> Any:
        # The hit path of a type with a Policy: the remembered queries, plus the age check.
        entry = self._remembered(type_, query)
        if entry is not None:
            now = self._clock()
            if entry.deadline > now:
                entry.referenced = True
                return entry.value if now - entry.written_at < max_age else MISSING
        found = self._entry_by_key(type_, query)
        return MISSING if found is MISSING or found[1] >= max_age else found[0]

    def _remembered(self, type_: Any, query: Mapping[str, Any]) -> _Entry | None:
        try:
            name, form = _form(query)
            return self._aliases[type_][name].get(form)
        except (KeyError, ValueError, TypeError):
            return None

    def _entry_by_key(self, type_: Any, query: Mapping[str, Any]) -> Any:
        # A query read for the first time (or whose entry changed): key it, and remember it.
        key = key_for(type_, query)
        found = self._load_entry(key, type_)
        if found is not MISSING:
            self._remember(type_, [(query, key)])
        return found

    def lookup_many_entries(self, type_: Any, queries: Sequence[Mapping[str, Any]]) -> list[Any]:
        # The batch hit path: one pass over the remembered queries and one clock reading;
        # only the queries not answered there are keyed, then read in one more pass.
        if self._batch_reads_overridden:
            return super().lookup_many_entries(type_, queries)
        self._check_type(type_)
        tables, now = self._aliases.get(type_, _NONE_REMEMBERED), self._clock()
        found: list[Any] = []
        unanswered = []
        for index, query in enumerate(queries):
            try:
                name, form = _form(query)
                entry = tables[name].get(form)
            except (KeyError, ValueError, TypeError):
                entry = None
            if entry is not None and entry.deadline > now:
                entry.referenced = True
                found.append((entry.value, now - entry.written_at))
            else:
                found.append(MISSING)
                unanswered.append(index)
        if unanswered:
            keys = [key_for(type_, queries[index]) for index in unanswered]
            learned = []
            for index, key, entry in zip(unanswered, keys, self._load_many_entries(keys, type_), strict=True):
                if entry is not MISSING:
                    found[index] = entry
                    learned.append((queries[index], key))
            if learned:
                self._remember(type_, learned)
        return found

    def store_many(
        self, type_: Any, entries: Sequence[tuple[Mapping[str, Any], Any]], *, seconds: Any = MISSING
    ) -> None:
        super().store_many(type_, entries, seconds=seconds)
        # Remember how these queries key (the process-wide memo has them now), so that
        # their first reads compute no key either.
        self._remember(type_, [(query, key_for(type_, query)) for query, _ in entries])

    def _remember(self, type_: Any, pairs: Sequence[tuple[Mapping[str, Any], str]]) -> None:
        learned = []
        for query, key in pairs:
            try:
                name, form = _form(query)
            except (ValueError, TypeError):
                continue
            if sys.getsizeof(form) <= MEMO_ENTRY_BYTES:  # bigger: cheaper to key again than to keep
                learned.append((name, form, key))
        if not learned:
            return
        with self._lock:
            # Bounded by what the store holds (maxsize may be a byte budget), with room for churn.
            if self._aliased + len(learned) > 2 * len(self._entries) + 1024:
                self._forget_aliases()
            tables = self._aliases.get(type_)
            if tables is None:
                tables = self._aliases[type_] = {}
            for name, form, key in learned:
                entry = self._get(key)  # under the lock: still in the store
                if entry is not None:
                    table = tables.get(name)
                    if table is None:
                        table = tables[name] = {}
                    table[form] = entry
                    entry.alias, entry.aliases = form, table
                    self._aliased += 1

    def _forget_aliases(self) -> None:
        _forget_tables(self._aliases)
        self._aliased = 0

    def _gone(self, entry: _Entry) -> None:
        # Called with the lock held, for an entry that has left the store: a reader holding it
        # may still return it (the read came first), but no later read finds it.
        entry.deadline = _GONE
        table, alias = entry.aliases, entry.alias
        if table is not None and table.get(alias) is entry:
            del table[alias]
            self._aliased -= 1
        self._size -= entry.size

    def _expire(self, key: str, entry: _Entry) -> None:
        # Only this entry: a writer may have put a fresh value under the key since it was read.
        with self._lock:
            if self._get(key) is entry:
                del self._entries[key]
                self._gone(entry)

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
                if sizeof is None:
                    self._insert(key, _Entry(value, deadline, now))
                else:
                    self._insert(key, _SizedEntry(value, deadline, now, sizeof(value)))

    def _insert(self, key: str, entry: _Entry) -> None:
        # Called with the lock held.
        cache = self._entries
        old = cache.pop(key, None)
        if old is not None:
            self._gone(old)
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
            self._gone(entry)
            return

    def _delete_many(self, keys: Sequence[str]) -> int:
        removed = 0
        with self._lock:
            for key in keys:
                entry = self._entries.pop(key, None)
                if entry is not None:
                    self._gone(entry)
                    removed += 1
        return removed

    def clear(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                entry.deadline = _GONE  # readers holding one must not return it after the clear
            self._entries.clear()
            self._forget_aliases()
            self._size = 0


_NONE_REMEMBERED: dict[str | None, dict[Any, _Entry]] = {}


def _form(query: Mapping[str, Any]) -> tuple[str | None, Any]:
    """Where a query is remembered: ``(field, value)`` for one str field holding a str or an int,
    else ``(None, its marshal bytes)``.

    Either form keeps value types apart, as keys.key_for does: a table of one field holds
    str and int values only, which never compare equal, and marshal tags every value it
    writes with its exact type (it refuses other types: ValueError).
    """
    if type(query) is dict:
        if len(query) == 1:
            [(name, value)] = query.items()
            if (type(value) is str or type(value) is int) and type(name) is str:
                return name, value
        return None, _dumps(query, _MARSHAL_VERSION)
    return None, _dumps(dict(query), _MARSHAL_VERSION)


def _forget_tables(aliases: dict[Any, dict[str | None, dict[Any, _Entry]]]) -> None:
    """Empty every table of remembered queries (entries still point at them), then the index."""
    for tables in aliases.values():
        for table in tables.values():
            table.clear()
    aliases.clear()
