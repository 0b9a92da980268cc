"""MemoryStore specifics: live objects, count and byte bounds, threads."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from test_store_contract import Item

from datapipelines import MISSING
from datapipelines.sinks.memory import MemoryStore


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
