"""Memory -> disk -> Redis -> remote through one pipeline: write-back, expiry per tier, batches."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from datapipelines import MISSING, DataPipeline, set_schema_version
from datapipelines.sinks.disk import DiskStore
from datapipelines.sinks.memory import MemoryStore
from datapipelines.sinks.redis import RedisStore
from tests.tiers.test_disk_store import count_transactions
from tests.tiers.test_redis_store import RoundTrips
from tests.tiers.test_store_contract import Item, Remote


@dataclasses.dataclass
class Tiers:
    memory: MemoryStore
    disk: DiskStore
    redis: RedisStore
    remote: Remote
    pipeline: DataPipeline

    @property
    def stores(self) -> tuple[MemoryStore, DiskStore, RedisStore]:
        return (self.memory, self.disk, self.redis)


@pytest.fixture
def make_tiers(tmp_path: Path, redis_client: Any, redis_namespace: str, fake_clock: Any) -> Iterator[Any]:
    built: list[Tiers] = []

    def make(memory: Any = None, disk: Any = None, redis: Any = None) -> Tiers:
        memory_store = MemoryStore(expirations=memory, clock=fake_clock)
        disk_store = DiskStore(tmp_path / f"disk{len(built)}", expirations=disk, clock=fake_clock)
        namespace = f"{redis_namespace}{len(built)}"
        redis_store = RedisStore(
            client=redis_client, namespace=namespace, expirations=redis, clock=fake_clock
        )
        remote = Remote()
        tiers = Tiers(
            memory_store,
            disk_store,
            redis_store,
            remote,
            DataPipeline([memory_store, disk_store, redis_store, remote]),
        )
        built.append(tiers)
        return tiers

    yield make
    for tiers in built:
        tiers.redis.clear()
        tiers.disk.close()


def test_a_remote_value_lands_in_every_tier_and_the_next_get_is_a_memory_hit(make_tiers: Any) -> None:
    tiers = make_tiers()
    assert tiers.pipeline.get(Item, {"id": 1}) == Item(1, "item 1")
    assert [store.lookup(Item, {"id": 1}) for store in tiers.stores] == [Item(1, "item 1")] * 3
    tiers.disk.clear()
    tiers.redis.clear()
    assert tiers.pipeline.get(Item, {"id": 1}) == Item(1, "item 1")
    assert tiers.remote.calls == [{"id": 1}]


def test_a_value_found_in_redis_lands_in_disk_and_memory_under_the_same_key(make_tiers: Any) -> None:
    tiers = make_tiers()
    tiers.redis.store_many(Item, [({"id": 5, "region": "EU"}, Item(5, "from redis"))])
    assert tiers.pipeline.get(Item, {"region": "EU", "id": 5}) == Item(5, "from redis")
    assert tiers.memory.lookup(Item, {"id": 5, "region": "EU"}) == Item(5, "from redis")
    assert tiers.disk.lookup(Item, {"id": 5, "region": "EU"}) == Item(5, "from redis")
    assert tiers.remote.calls == []


def test_a_promoted_value_gets_each_faster_tiers_own_expiry(make_tiers: Any, fake_clock: Any) -> None:
    tiers = make_tiers(memory={Item: 100}, disk={Item: 50}, redis={Item: 10})
    tiers.redis.store_many(Item, [({"id": 1}, Item(1, "x"))])
    fake_clock.advance(9)  # one second left in Redis
    assert tiers.pipeline.get(Item, {"id": 1}) == Item(1, "x")
    fake_clock.advance(5)
    assert tiers.redis.lookup(Item, {"id": 1}) is MISSING
    assert tiers.disk.lookup(Item, {"id": 1}) == Item(1, "x")
    fake_clock.advance(45)  # 59 s: past the disk's 50 s from promotion, inside memory's 100 s
    assert tiers.disk.lookup(Item, {"id": 1}) is MISSING
    assert tiers.pipeline.get(Item, {"id": 1}) == Item(1, "x")
    fake_clock.advance(50)
    assert tiers.memory.lookup(Item, {"id": 1}) is MISSING
    assert tiers.remote.calls == []


def test_a_tier_that_never_stores_a_type_is_skipped_on_write_back(make_tiers: Any) -> None:
    tiers = make_tiers(memory={Item: 0})
    tiers.pipeline.get(Item, {"id": 1})
    assert tiers.memory.lookup(Item, {"id": 1}) is MISSING
    assert tiers.disk.lookup(Item, {"id": 1}) == Item(1, "item 1")


def test_put_stores_in_every_tier_and_invalidate_removes_from_every_tier(make_tiers: Any) -> None:
    tiers = make_tiers()
    tiers.pipeline.put(Item, Item(3, "put"), query={"id": 3})
    assert [store.lookup(Item, {"id": 3}) for store in tiers.stores] == [Item(3, "put")] * 3
    assert tiers.pipeline.invalidate(Item, {"id": 3}) == 3
    assert [store.lookup(Item, {"id": 3}) for store in tiers.stores] == [MISSING] * 3
    assert tiers.pipeline.get(Item, {"id": 3}) == Item(3, "item 3")


def test_get_batch_asks_each_tier_once_for_what_earlier_tiers_missed(
    make_tiers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiers = make_tiers()
    queries = [{"id": i} for i in range(40)]
    tiers.memory.store_many(Item, [(q, Item(q["id"], "memory")) for q in queries[:10]])
    tiers.disk.store_many(Item, [(q, Item(q["id"], "disk")) for q in queries[10:20]])
    tiers.redis.store_many(Item, [(q, Item(q["id"], "redis")) for q in queries[20:30]])
    tiers.redis.client.ping()
    statements, redis_trips = count_transactions(tiers.disk), RoundTrips(monkeypatch)

    found = tiers.pipeline.get_batch(Item, queries)

    names = ["memory"] * 10 + ["disk"] * 10 + ["redis"] * 10 + [f"item {i}" for i in range(30, 40)]
    assert found == [Item(i, name) for i, name in enumerate(names)]
    assert tiers.remote.calls == [{"queries": queries[30:]}]  # one get_many for the last misses
    assert len(redis_trips) == 2  # one MGET of 20 keys, one pipelined write-back of 10
    assert redis_trips.commands[0].startswith(b"*21\r\n$4\r\nMGET")
    # disk: one read of the 30 memory misses, one write-back of Redis's 10, one of the remote's 10
    assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"] * 3
    assert sum(s.startswith("SELECT rowid, expire_time") for s in statements) == 30  # diskcache's get
    assert tiers.memory.lookup_many(Item, queries) == found

    statements.clear()
    assert tiers.pipeline.get_batch(Item, queries) == found
    assert len(redis_trips) == 2 and statements == [] and len(tiers.remote.calls) == 1


def test_bumping_a_schema_version_misses_every_tier(make_tiers: Any) -> None:
    @dataclasses.dataclass
    class Versioned:
        id: int

    class VersionedRemote(Remote):
        pass

    VersionedRemote.get.register(Versioned)(lambda self, query, context=None: Versioned(query["id"]))
    tiers = make_tiers()
    remote = VersionedRemote()
    pipeline = DataPipeline([*tiers.stores, remote])
    pipeline.get(Versioned, {"id": 1})
    set_schema_version(Versioned, 2)
    assert [store.lookup(Versioned, {"id": 1}) for store in tiers.stores] == [MISSING] * 3
    assert pipeline.get(Versioned, {"id": 1}) == Versioned(1)
