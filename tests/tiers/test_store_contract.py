"""The contract every store keeps: memory, disk, Redis (real server), Redis (fakeredis), and a
dict of bytes (tests/support/tiers.py), the smallest tier EncodedStore's five byte-level methods make."""

from __future__ import annotations

import dataclasses
import datetime
import multiprocessing
from collections.abc import Callable
from typing import Any

import pytest

from datapipelines import (
    MISSING,
    DataPipeline,
    DataSource,
    NotFoundError,
    UnsupportedError,
    key_for,
    set_schema_version,
)
from datapipelines.sinks.disk import DiskStore
from datapipelines.sinks.memory import MemoryStore
from datapipelines.sinks.redis import RedisStore
from datapipelines.store import Store
from tests.support.tiers import DictOfBytesStore


@dataclasses.dataclass(frozen=True)
class Item:
    id: int
    name: str
    tags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Other:
    id: int


class Remote(DataSource):
    """A slow remote stand-in: knows every Item and records each call."""

    # get_batch may hand get_many {"queries": [...]} in one call.
    batch_get_many = True

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        raise NotImplementedError

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        raise NotImplementedError

    @get.register(Item)
    def get_item(self, query: Any, context: Any = None) -> Item:
        self.calls.append(dict(query))
        if query["id"] < 0:
            raise NotFoundError(f"no item {query['id']}")
        return Item(query["id"], f"item {query['id']}")

    @get_many.register(Item)
    def get_items(self, query: Any, context: Any = None) -> list[Item | None]:
        self.calls.append(dict(query))
        return [Item(q["id"], f"item {q['id']}") if q["id"] >= 0 else None for q in query["queries"]]


MakeStore = Callable[..., Store]
ENCODED = ["disk", "redis-real", "redis-fakeredis", "dict-of-bytes"]
STORES = ["memory", *ENCODED]


def stores_of_one_kind(request: pytest.FixtureRequest, tmp_path: Any, fake_clock: Any) -> Any:
    """Builds stores of ``request.param``'s kind on the test's clock; all of them are closed afterwards."""
    kind = request.param
    built: list[Store] = []

    def make(**options: Any) -> Store:
        options.setdefault("clock", fake_clock)
        store: Store
        if kind == "memory":
            store = MemoryStore(**options)
        elif kind == "disk":
            store = DiskStore(tmp_path / f"cache{len(built)}", **options)
        elif kind == "dict-of-bytes":
            store = DictOfBytesStore(**options)
        else:
            client = request.getfixturevalue("redis_client" if kind == "redis-real" else "fake_redis_client")
            store = RedisStore(client=client, namespace=request.getfixturevalue("redis_namespace"), **options)
        built.append(store)
        return store

    yield make
    for store in built:
        store.clear()
        if hasattr(store, "close"):
            store.close()


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Any, fake_clock: Any) -> Any:
    yield from stores_of_one_kind(request, tmp_path, fake_clock)


def put(store: Store, type_: Any, query: dict[str, Any], value: Any) -> None:
    store.store_many(type_, [(query, value)])


def test_a_stored_value_comes_back_equal(make_store: MakeStore) -> None:
    store = make_store()
    values = {
        "item": (Item, Item(1, "one", ("a", "b"))),
        "plain": (dict, {"name": "x", "n": [1, 2.5, None, True], "nested": {"t": (1, 2)}}),
        "text": (str, "héllo"),
    }
    for name, (type_, value) in values.items():
        put(store, type_, {"name": name}, value)
    for name, (type_, value) in values.items():
        assert store.lookup(type_, {"name": name}) == value
        assert store.get(type_, {"name": name}) == value


def test_a_miss_is_missing_and_get_raises_not_found(make_store: MakeStore) -> None:
    store = make_store()
    assert store.lookup(Item, {"id": 404}) is MISSING
    with pytest.raises(NotFoundError, match="Item"):
        store.get(Item, {"id": 404})


def test_the_key_ignores_query_order_and_keeps_value_types(make_store: MakeStore) -> None:
    store = make_store()
    put(store, Item, {"id": 1, "region": "EU"}, Item(1, "eu"))
    assert store.lookup(Item, {"region": "EU", "id": 1}) == Item(1, "eu")
    assert store.lookup(Item, {"region": "EU", "id": "1"}) is MISSING


def test_types_under_one_query_do_not_collide(make_store: MakeStore) -> None:
    store = make_store()
    put(store, Item, {"id": 1}, Item(1, "item"))
    put(store, Other, {"id": 1}, Other(1))
    assert store.lookup(Item, {"id": 1}) == Item(1, "item")
    assert store.lookup(Other, {"id": 1}) == Other(1)


def test_a_write_replaces_the_previous_value(make_store: MakeStore) -> None:
    store = make_store()
    put(store, Item, {"id": 1}, Item(1, "old"))
    put(store, Item, {"id": 1}, Item(1, "new"))
    assert store.lookup(Item, {"id": 1}) == Item(1, "new")


def test_batches_align_hits_and_misses(make_store: MakeStore) -> None:
    store = make_store()
    store.store_many(Item, [({"id": i}, Item(i, str(i))) for i in range(0, 50, 2)])
    found = store.lookup_many(Item, [{"id": i} for i in range(50)])
    assert found == [Item(i, str(i)) if i % 2 == 0 else MISSING for i in range(50)]
    assert store.lookup_many(Item, []) == []


def test_each_type_expires_on_its_own_schedule(make_store: MakeStore, fake_clock: Any) -> None:
    store = make_store(expirations={Item: 10, "Other": datetime.timedelta(seconds=5)})
    put(store, Item, {"id": 1}, Item(1, "x"))
    put(store, Other, {"id": 1}, Other(1))
    fake_clock.advance(6)
    assert store.lookup(Other, {"id": 1}) is MISSING
    assert store.lookup(Item, {"id": 1}) == Item(1, "x")
    fake_clock.advance(5)
    assert store.lookup(Item, {"id": 1}) is MISSING
    assert store.lookup_many(Item, [{"id": 1}]) == [MISSING]


def test_zero_never_stores_and_minus_one_or_none_never_expire(make_store: MakeStore, fake_clock: Any) -> None:
    store = make_store(expirations={Item: 0, Other: -1, "dict": None}, default_expiry=1)
    put(store, Item, {"id": 1}, Item(1, "x"))
    put(store, Other, {"id": 1}, Other(1))
    put(store, dict, {"id": 1}, {"a": 1})
    put(store, str, {"id": 1}, "short-lived")
    assert store.lookup(Item, {"id": 1}) is MISSING
    fake_clock.advance(10 * 365 * 86400)
    assert store.lookup(Other, {"id": 1}) == Other(1)
    assert store.lookup(dict, {"id": 1}) == {"a": 1}
    assert store.lookup(str, {"id": 1}) is MISSING


def test_delete_and_clear(make_store: MakeStore) -> None:
    store = make_store()
    put(store, Item, {"id": 1}, Item(1, "x"))
    put(store, Item, {"id": 2}, Item(2, "y"))
    assert store.delete(Item, {"id": 1}) is True
    assert store.delete(Item, {"id": 1}) is False
    assert store.lookup(Item, {"id": 1}) is MISSING
    store.clear()
    assert store.lookup(Item, {"id": 2}) is MISSING


def test_a_store_of_declared_types_refuses_others(make_store: MakeStore) -> None:
    store = make_store(types={Item})
    assert store.provides == {Item} and store.accepts == {Item}
    with pytest.raises(UnsupportedError, match="Other"):
        store.store_many(Other, [({"id": 1}, Other(1))])
    with pytest.raises(UnsupportedError, match="Other"):
        store.lookup_many(Other, [{"id": 1}])


def test_bumping_the_schema_version_misses_old_entries(make_store: MakeStore) -> None:
    @dataclasses.dataclass
    class Versioned:
        value: int

    store = make_store()
    put(store, Versioned, {"id": 1}, Versioned(1))
    assert store.lookup(Versioned, {"id": 1}) == Versioned(1)  # a store may remember how it keyed this
    old_key = key_for(Versioned, {"id": 1})
    set_schema_version(Versioned, 2)
    assert key_for(Versioned, {"id": 1}) != old_key
    assert store.lookup(Versioned, {"id": 1}) is MISSING
    put(store, Versioned, {"id": 1}, Versioned(2))
    assert store.lookup(Versioned, {"id": 1}) == Versioned(2)


def test_a_pipeline_reads_through_writes_back_and_invalidates(make_store: MakeStore) -> None:
    store, remote = make_store(), Remote()
    pipeline = DataPipeline([store, remote])
    assert pipeline.get(Item, {"id": 7}) == Item(7, "item 7")
    assert pipeline.get(Item, {"id": 7}) == Item(7, "item 7")
    assert remote.calls == [{"id": 7}]
    pipeline.put(Item, Item(8, "direct"), query={"id": 8})
    assert pipeline.get(Item, {"id": 8}) == Item(8, "direct")
    assert pipeline.invalidate(Item, {"id": 7}) == 1
    assert store.lookup(Item, {"id": 7}) is MISSING
    assert pipeline.get_batch(Item, [{"id": 8}, {"id": 9}]) == [Item(8, "direct"), Item(9, "item 9")]
    assert store.lookup(Item, {"id": 9}) == Item(9, "item 9")


def test_an_entry_knows_its_age(make_store: MakeStore, fake_clock: Any) -> None:
    store = make_store(default_expiry=60)
    put(store, Item, {"id": 1}, Item(1, "x"))
    fake_clock.advance(7)
    value, age = store.lookup_entry(Item, {"id": 1})
    assert value == Item(1, "x") and age == pytest.approx(7)
    assert store.lookup_entry(Item, {"id": 2}) is MISSING
    fake_clock.advance(60)
    assert store.lookup_entry(Item, {"id": 1}) is MISSING


# -- sharing between processes (used by the disk and Redis test files) ------------------------------


def _share_worker(kind: str, location: str, namespace: str, worker: int, barrier: Any, results: Any) -> None:
    store = DiskStore(location) if kind == "disk" else RedisStore(location, namespace=namespace)
    mine = [({"id": worker * 1000 + i}, Item(worker * 1000 + i, f"from {worker}")) for i in range(100)]
    barrier.wait()
    for start in range(0, 100, 10):
        store.store_many(Item, mine[start : start + 10])
    for i in range(30):  # both processes overwrite one key at the same time
        store.store_many(Item, [({"id": -1}, Item(-1, f"race {worker} {i}"))])
    barrier.wait()
    other = 1 - worker
    found = store.lookup_many(Item, [{"id": other * 1000 + i} for i in range(100)])
    seen = sum(value == Item(other * 1000 + i, f"from {other}") for i, value in enumerate(found))
    results.put((worker, seen, store.lookup(Item, {"id": -1})))


def share_between_two_processes(kind: str, location: str, namespace: str = "") -> list[tuple[int, int, Any]]:
    """Two real processes write into one store at once and read each other's values back."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2, timeout=60), context.Queue()
    processes = [
        context.Process(target=_share_worker, args=(kind, location, namespace, n, barrier, results))
        for n in range(2)
    ]
    for process in processes:
        process.start()
    outcome = sorted(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    return outcome


def assert_shared_cleanly(outcome: list[tuple[int, int, Any]]) -> None:
    (_, seen0, race0), (_, seen1, race1) = outcome
    assert (seen0, seen1) == (100, 100)
    assert race0 == race1 and race0.id == -1 and race0.name.startswith("race ")
