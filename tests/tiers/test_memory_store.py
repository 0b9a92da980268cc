"""MemoryStore specifics: live objects, count and byte bounds, threads."""

from __future__ import annotations

import gc
import itertools
import random
import threading
import time
import weakref
from typing import Any

import pytest

from datapipelines import MISSING, keys, set_schema_version
from datapipelines.sinks.memory import MemoryStore
from tests.tiers.test_store_contract import Item


def test_values_are_kept_as_the_same_objects() -> None:
    store, value = MemoryStore(), {"mutable": [1]}
    store.store_many(dict, [({"id": 1}, value)])
    assert store.lookup(dict, {"id": 1}) is value
    assert store.lookup_many(dict, [{"id": 1}])[0] is value


def test_bounded_by_count_evicting_the_least_recently_used() -> None:
    store = MemoryStore(maxsize=2)
    store.store_many(Item, [({"id": 1}, Item(1, "a")), ({"id": 2}, Item(2, "b"))])
    assert store.lookup(Item, {"id": 1}) == Item(1, "a")  # 2 is now the least recently used
    store.store_many(Item, [({"id": 3}, Item(3, "c"))])
    assert len(store) == 2
    assert store.lookup_many(Item, [{"id": 1}, {"id": 2}, {"id": 3}]) == [Item(1, "a"), MISSING, Item(3, "c")]


def test_bounded_by_bytes_with_a_size_function() -> None:
    store = MemoryStore(maxsize=10, getsizeof=len)
    store.store_many(str, [({"k": "a"}, "aaaa"), ({"k": "b"}, "bbbb")])
    store.store_many(str, [({"k": "c"}, "cccc")])  # 12 bytes > 10: the oldest goes
    assert store.lookup_many(str, [{"k": k} for k in "abc"]) == [MISSING, "bbbb", "cccc"]


def test_a_value_larger_than_the_budget_is_not_cached_and_evicts_nothing() -> None:
    store = MemoryStore(maxsize=10, getsizeof=len)
    store.store_many(str, [({"k": "small"}, "tiny"), ({"k": "big"}, "small")])
    store.store_many(str, [({"k": "big"}, "x" * 11)])
    assert store.lookup(str, {"k": "big"}) is MISSING
    assert store.lookup(str, {"k": "small"}) == "tiny"


def test_expired_entries_leave_the_cache_when_read(fake_clock: Any) -> None:
    store = MemoryStore(default_expiry=5, clock=fake_clock)
    store.store_many(Item, [({"id": i}, Item(i, "x")) for i in range(3)])
    fake_clock.advance(5)
    assert store.lookup_many(Item, [{"id": 0}, {"id": 1}]) == [MISSING, MISSING]
    assert store.lookup(Item, {"id": 2}) is MISSING
    assert len(store) == 0


def test_maxsize_must_be_positive() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        MemoryStore(maxsize=0)


def test_safe_to_share_between_threads() -> None:
    store, errors = MemoryStore(maxsize=64), []

    def hammer(offset: int) -> None:
        try:
            for i in range(2000):
                query = {"id": (i + offset) % 100}
                store.store_many(Item, [(query, Item(query["id"], "x"))])
                found = store.lookup_many(Item, [query, {"id": i % 100}])
                assert found[0] in (MISSING, Item(query["id"], "x"))
                store.delete(Item, {"id": i % 7})
        except Exception as error:  # collected: an assertion in a thread would be lost
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(store) <= 64


class _RecordingClock:
    """time.monotonic that remembers, per thread, the last reading it gave."""

    def __init__(self) -> None:
        self._seen = threading.local()

    def __call__(self) -> float:
        self._seen.now = time.monotonic()
        return self._seen.now  # type: ignore[no-any-return]

    def last(self) -> float:
        return self._seen.now  # type: ignore[no-any-return]


def _one_field(key: int, rng: random.Random) -> dict[str, Any]:
    return {"id": key}


def _two_fields_either_order(key: int, rng: random.Random) -> dict[str, Any]:
    # Remembered by marshal bytes, which differ with the order: two remembered forms per key.
    return {"id": key, "kind": "x"} if rng.random() < 0.5 else {"kind": "x", "id": key}


@pytest.mark.parametrize("query_of", [_one_field, _two_fields_either_order])
def test_readers_writers_evictions_and_expiry_at_once_agree_with_a_model(query_of: Any) -> None:
    # Each key has one owner thread, which puts (with short, long or no expiry) and deletes it;
    # every operation gets a per-key sequence number and a global tick when it completed. Readers
    # tick before each lookup. Whatever a read returns must be MISSING or a value of that key
    # that is not older than the last operation completed before the read began, and not past
    # its deadline when the read began.
    clock, ticks = _RecordingClock(), itertools.count()
    store = MemoryStore(maxsize=40, clock=clock)
    keys, writers, readers, steps = 160, 4, 4, 3000
    # Per key: (sequence number, tick when done, "put" or "delete", deadline).
    history: dict[int, list[tuple[int, int, str, float]]] = {k: [] for k in range(keys)}
    observations: list[tuple[int, int, Any, float]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(writers + readers)

    def write(owner: int) -> None:
        rng, sequence = random.Random(owner), dict.fromkeys(range(owner, keys, writers), 0)
        start.wait()
        for _ in range(steps):
            key = rng.randrange(owner, keys, writers)
            sequence[key] += 1
            seq = sequence[key]
            if rng.random() < 0.15:
                store.delete(tuple, query_of(key, rng))
                history[key].append((seq, next(ticks), "delete", 0.0))
                continue
            seconds = rng.choice([None, 0.0005, 0.01, 60])
            store.store_many(tuple, [(query_of(key, rng), (key, seq))], seconds=seconds)
            deadline = float("inf") if seconds is None else clock.last() + seconds
            history[key].append((seq, next(ticks), "put", deadline))

    def read(reader: int) -> None:
        rng, seen = random.Random(100 + reader), []
        start.wait()
        for _ in range(steps):
            queries = [query_of(rng.randrange(keys), rng) for _ in range(rng.choice([1, 1, 1, 5]))]
            began, now = next(ticks), clock()
            if len(queries) > 1:
                values = store.lookup_many(tuple, queries)
            elif rng.random() < 0.75:
                values = [store.lookup(tuple, queries[0])]
            else:  # the hit paths that tell ages: sampled hits, types with a Policy
                found = store.lookup_entry(tuple, queries[0])
                values = [MISSING if found is MISSING else found[0]]
            seen.extend((q["id"], began, v, now) for q, v in zip(queries, values, strict=True))
        observations.extend(seen)

    def guarded(target: Any, n: int) -> threading.Thread:
        def run() -> None:
            try:
                target(n)
            except BaseException as error:  # collected: an assertion in a thread would be lost
                errors.append(error)

        return threading.Thread(target=run)

    threads = [guarded(write, n) for n in range(writers)] + [guarded(read, n) for n in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store) <= 40

    returned = 0
    for key, began, value, now in observations:
        done_before = [seq for seq, tick, _, _ in history[key] if tick < began]
        if value is MISSING:
            continue
        returned += 1
        found_key, seq = value
        assert found_key == key, f"key {key} answered with the value of key {found_key}"
        op = next(entry for entry in history[key] if entry[0] == seq)
        assert op[2] == "put"
        assert not done_before or seq >= max(done_before), f"key {key}: read {seq} after {max(done_before)}"
        assert op[3] > now, f"key {key}: value {seq} returned past its deadline"
    assert returned > 1000  # the readers did see values, not just misses

    # At rest the store holds, for each key, at most the last value its owner put (if unexpired).
    now, rng = clock(), random.Random(0)
    for key, ops in history.items():
        value = store.lookup(tuple, query_of(key, rng))
        if value is not MISSING:
            seq, _, op, deadline = ops[-1]
            assert value == (key, seq) and op == "put" and deadline > now


def _beyond_the_key_memo(monkeypatch: Any) -> tuple[MemoryStore, list[dict[str, str]], list[Any]]:
    """A store holding more keys than the process-wide key memo, and a log of key computations."""
    count = 70_000
    store = MemoryStore(maxsize=count)
    queries = [{"key": f"k{i}"} for i in range(count)]
    store.store_many(str, [(q, q["key"]) for q in queries])
    computed: list[Any] = []
    real = keys.compute_key
    monkeypatch.setattr(keys, "compute_key", lambda *args: computed.append(args) or real(*args))
    return store, queries, computed


def test_a_hit_costs_no_key_computation_however_many_keys_are_in_use(monkeypatch: Any) -> None:
    # More keys than the process-wide key memo holds: the store remembers its own queries' keys.
    store, queries, computed = _beyond_the_key_memo(monkeypatch)
    assert [store.lookup(str, q) for q in queries] == [q["key"] for q in queries]  # first reads too
    assert [store.lookup(str, q) for q in queries[::2]] == [q["key"] for q in queries[::2]]
    assert store.lookup_many(str, queries[1::2]) == [q["key"] for q in queries[1::2]]
    assert computed == []


def test_a_fresh_hit_of_a_type_with_a_policy_costs_no_key_computation_either(monkeypatch: Any) -> None:
    store, queries, computed = _beyond_the_key_memo(monkeypatch)
    assert [store.lookup_fresh(str, q, 3600.0) for q in queries] == [q["key"] for q in queries]
    assert store.lookup_fresh(str, queries[0], 0.0) is MISSING  # older than max_age: due for refresh
    assert computed == []


def test_remembered_keys_follow_a_schema_bump_and_a_clear() -> None:
    class Versioned:
        pass

    store = MemoryStore()
    store.store_many(Versioned, [({"id": 1}, "v1")])
    assert store.lookup(Versioned, {"id": 1}) == "v1" and store.lookup_many(Versioned, [{"id": 1}]) == ["v1"]
    set_schema_version(Versioned, 2)
    assert store.lookup(Versioned, {"id": 1}) is MISSING
    assert store.lookup_many(Versioned, [{"id": 1}]) == [MISSING]
    store.store_many(Versioned, [({"id": 1}, "v2")])
    assert store.lookup(Versioned, {"id": 1}) == "v2"
    store.clear()
    assert store.lookup(Versioned, {"id": 1}) is MISSING


def test_a_store_nobody_holds_is_freed() -> None:
    store = MemoryStore()
    store.store_many(str, [({"id": 1}, "x")])
    assert store.lookup(str, {"id": 1}) == "x"
    freed = weakref.ref(store)
    del store
    gc.collect()
    assert freed() is None


def test_typed_queries_stay_apart_on_the_remembered_path() -> None:
    store = MemoryStore()
    variants: list[Any] = [1, 1.0, "1", True]
    store.store_many(str, [({"id": v}, repr(v)) for v in variants])
    for _ in range(2):  # the second round is answered from the remembered keys
        assert [store.lookup(str, {"id": v}) for v in variants] == ["1", "1.0", "'1'", "True"]
        assert store.lookup_many(str, [{"id": v} for v in variants]) == ["1", "1.0", "'1'", "True"]


@pytest.mark.parametrize("options", [{"maxsize": 100}, {"maxsize": 10**9, "getsizeof": len}])
def test_remembered_queries_stay_bounded_by_what_the_store_holds(options: dict[str, Any]) -> None:
    # Many distinct queries come and go (evicted or deleted): what the store remembers of
    # them must not grow with the traffic, even when maxsize is a byte budget.
    store = MemoryStore(**options)
    for i in range(20_000):
        store.store_many(str, [({"id": i}, "x")])
        assert store.lookup(str, {"id": i}) == "x"
        if "getsizeof" in options:
            store.delete(str, {"id": i - 50})
    remembered = sum(len(table) for table in store._aliases.values())
    assert remembered <= 2 * len(store) + 1024


@pytest.mark.parametrize("query", [{"id": 1}, {"id": "one"}, {"id": 1, "kind": "x"}, {"id": (1, 2)}])
def test_a_remembered_query_follows_its_key_through_replace_delete_and_eviction(
    query: dict[str, Any],
) -> None:
    # Both remembered forms (one field by its value, others by marshal bytes) and every way
    # an entry leaves the store.
    store = MemoryStore(maxsize=1)
    reordered = dict(reversed(list(query.items())))  # a second remembered form of the same key
    store.store_many(str, [(query, "v1")])
    assert store.lookup(str, query) == store.lookup(str, reordered) == "v1"
    store.store_many(str, [(query, "v2")])
    assert [store.lookup(str, query), store.lookup(str, reordered)] == ["v2", "v2"]
    assert store.lookup_many(str, [reordered, query]) == ["v2", "v2"]
    assert store.delete(str, reordered)
    assert [store.lookup(str, query), store.lookup(str, reordered)] == [MISSING, MISSING]
    assert store.lookup_entry(str, query) is MISSING and store.lookup_fresh(str, query, 60.0) is MISSING
    store.store_many(str, [(query, "v3")])
    assert store.lookup(str, reordered) == "v3"
    store.store_many(str, [({"other": 1}, "a")])  # evicts the query's entry, read or not
    assert [store.lookup(str, query), store.lookup(str, reordered)] == [MISSING, MISSING]
    assert store.lookup_many(str, [query, reordered]) == [MISSING, MISSING]


class _Value:
    pass


@pytest.mark.parametrize("leave", ["replaced", "deleted", "evicted", "expired", "cleared"])
def test_a_value_that_left_the_store_is_freed_though_its_query_was_remembered(
    leave: str, fake_clock: Any
) -> None:
    # The remembered query must not keep an evicted value alive: a byte budget would mean nothing.
    store = MemoryStore(maxsize=1, clock=fake_clock, default_expiry=10)
    value = _Value()
    store.store_many(_Value, [({"id": 1}, value)])
    assert store.lookup(_Value, {"id": 1}) is value and store.lookup(_Value, {"id": 1}) is value
    freed = weakref.ref(value)
    del value
    if leave == "replaced":
        store.store_many(_Value, [({"id": 1}, _Value())])
    elif leave == "deleted":
        store.delete(_Value, {"id": 1})
    elif leave == "evicted":
        store.store_many(_Value, [({"id": 2}, _Value())])
    elif leave == "expired":
        fake_clock.advance(10)
        assert store.lookup(_Value, {"id": 1}) is MISSING
    else:
        store.clear()
    gc.collect()
    assert freed() is None


def test_one_field_queries_keep_their_field_names_apart() -> None:
    store = MemoryStore()
    names: list[Any] = ["1", 1, 1.0, True]
    store.store_many(str, [({name: "v"}, repr(name)) for name in names])
    store.store_many(str, [({"a": 1}, "a"), ({"b": 1}, "b")])
    for _ in range(2):  # the second round is answered from the remembered queries
        assert [store.lookup(str, {name: "v"}) for name in names] == ["'1'", "1", "1.0", "True"]
        assert [store.lookup(str, {"a": 1}), store.lookup(str, {"b": 1})] == ["a", "b"]
        assert store.lookup(str, {"a": True}) is MISSING and store.lookup(str, {"a": 1.0}) is MISSING
