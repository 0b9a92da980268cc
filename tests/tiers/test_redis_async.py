"""The async byte path of RedisStore (redis.asyncio) against real servers: the same bytes as the sync path."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.asyncio.connection import AbstractConnection

from datapipelines import MISSING, key_for
from datapipelines.sinks.redis import RedisStore
from datapipelines.sinks.redis_async import AsyncRedisBytes
from tests.support.resilience import RedisServer, private_redis, wait_until  # noqa: F401  (a fixture)
from tests.tiers.test_redis_cluster import PrivateCluster, cluster  # noqa: F401  (a fixture)
from tests.tiers.test_store_contract import Item


@pytest.fixture
def store(redis_url: str, redis_namespace: str) -> Iterator[RedisStore]:
    store = RedisStore(redis_url, namespace=redis_namespace, expirations={Item: 60})
    yield store
    store.clear()
    store.close()


def keyed(ident: int) -> str:
    return key_for(Item, {"id": ident})


def encoded(store: RedisStore, ident: int, seconds: float | None = 60.0) -> tuple[str, bytes]:
    """The (key, bytes) the store itself writes for Item(ident)."""
    key = keyed(ident)
    return key, store._codec.encode(Item(ident, f"n{ident}"), Item, key, store._clock(), seconds)


def decoded(store: RedisStore, key: str, blob: Any) -> Any:
    entry = store._decoded(key, blob, Item, store._clock())
    return MISSING if entry is MISSING else entry[0]


def decoded_all(store: RedisStore, blobs: list[Any], first: int = 0) -> list[Any]:
    """The Items in ``blobs``, read under the keys of ids ``first``, ``first + 1``, ..."""
    return [decoded(store, keyed(first + i), blob) for i, blob in enumerate(blobs)]


def items(ids: range) -> list[Item]:
    return [Item(i, f"n{i}") for i in ids]


def queries(ids: range) -> list[dict[str, int]]:
    return [{"id": i} for i in ids]


def connected_clients(server: RedisServer) -> int:
    with redis.Redis(port=server.port) as client:
        return len(client.client_list()) - 1  # not this one


class RoundTrips:
    """Counts the packed writes of asyncio connections: one write is one round trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        send = AbstractConnection.send_packed_command

        async def counting(connection: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            await send(connection, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)


def test_bytes_written_by_the_sync_path_are_read_by_the_async_path_and_back(store: RedisStore) -> None:
    store.store_many(Item, [({"id": i}, Item(i, f"n{i}")) for i in range(3)])
    twins = AsyncRedisBytes(store)

    async def run() -> tuple[Any, list[Any]]:
        one = await twins.afetch(keyed(0))
        many = await twins.afetch_many([keyed(i) for i in range(4)])
        await twins.asave_many([encoded(store, i) for i in range(10, 13)], 60.0)
        await twins.aclose()
        return one, many

    one, many = asyncio.run(run())
    assert decoded(store, keyed(0), one) == Item(0, "n0")
    assert decoded_all(store, many) == [*items(range(3)), MISSING]
    assert store.lookup_many(Item, queries(range(10, 13))) == items(range(10, 13))


def test_the_ttl_is_written_with_the_value(store: RedisStore) -> None:
    twins = AsyncRedisBytes(store)

    async def run() -> None:
        await twins.asave_many([encoded(store, 1, 5.0)], 5.0)
        await twins.asave_many([encoded(store, 2, 0.0004), encoded(store, 3, None)], None)
        await twins.asave_many([encoded(store, 4, 0.0004), encoded(store, 5, 0.0004)], 0.0004)
        await twins.aclose()

    asyncio.run(run())
    assert 0 < store.client.pttl(f"{store.namespace}:{keyed(1)}") <= 5000
    assert store.client.pttl(f"{store.namespace}:{keyed(3)}") == -1  # no expiry
    assert store.lookup(Item, {"id": 3}) == Item(3, "n3")


def test_deletes_and_clear_stay_in_the_namespace(store: RedisStore, redis_url: str) -> None:
    neighbour = RedisStore(redis_url, namespace=store.namespace + "-next", expirations={Item: 60})
    neighbour.store_many(Item, [({"id": 1}, Item(1, "kept"))])
    store.store_many(Item, [({"id": i}, Item(i, f"n{i}")) for i in range(3)])
    twins = AsyncRedisBytes(store)

    async def run() -> tuple[int, int]:
        removed = await twins.adelete_many([keyed(0), keyed(1), keyed(99)])
        none = await twins.adelete_many([])
        await twins.aclear()
        await twins.aclose()
        return removed, none

    assert asyncio.run(run()) == (2, 0)
    assert store.lookup_many(Item, queries(range(3))) == [MISSING] * 3
    assert neighbour.lookup(Item, {"id": 1}) == Item(1, "kept")
    neighbour.clear()
    neighbour.close()


def test_a_batch_is_one_round_trip(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    twins = AsyncRedisBytes(store)

    async def run() -> tuple[int, int, list[Any]]:
        await twins.afetch(keyed(0))  # connect (and handshake) before counting
        trips = RoundTrips(monkeypatch)
        await twins.asave_many([encoded(store, i) for i in range(100)], 60.0)
        saved = trips.count
        found = await twins.afetch_many([keyed(i) for i in range(100)])
        await twins.aclose()
        return saved, trips.count - saved, found

    saved, fetched, found = asyncio.run(run())
    assert (saved, fetched) == (1, 1)
    assert decoded_all(store, found) == items(range(100))


def test_two_loops_in_sequence_and_two_threads_with_their_own_loops(store: RedisStore) -> None:
    twins = AsyncRedisBytes(store)

    async def round_trip(offset: int) -> list[Any]:
        await twins.asave_many([encoded(store, offset + i) for i in range(20)], 60.0)
        found = await asyncio.gather(*(twins.afetch(keyed(offset + i)) for i in range(20)))
        return decoded_all(store, list(found), offset)

    expected = items(range(20))
    assert asyncio.run(round_trip(0)) == expected
    assert asyncio.run(round_trip(0)) == expected  # a new loop: the first loop's client is not reused
    assert len(twins._clients) == 1  # the ended first loop's client was let go
    results: dict[int, Any] = {}

    def in_a_thread(offset: int) -> None:
        try:
            results[offset] = asyncio.run(round_trip(offset))
        except BaseException as error:  # reported by the assertion below
            results[offset] = error

    threads = [threading.Thread(target=in_a_thread, args=(offset,)) for offset in (100, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == {offset: items(range(offset, offset + 20)) for offset in (100, 200)}


def test_tasks_wait_for_a_connection_and_aclose_closes_them(private_redis: RedisServer) -> None:  # noqa: F811
    store = RedisStore(private_redis.url, namespace="async", expirations={Item: 60})
    twins = AsyncRedisBytes(store, max_connections=2)
    before = connected_clients(private_redis)

    async def run() -> tuple[list[Any], int, int]:
        await twins.asave_many([encoded(store, i) for i in range(50)], 60.0)
        found = await asyncio.gather(*(twins.afetch(keyed(i)) for i in range(50)))
        during = connected_clients(private_redis)
        await twins.aclose()
        wait_until(lambda: connected_clients(private_redis) == before, timeout=2, what="aclose to disconnect")
        again = await twins.afetch(keyed(0))  # the next call opens a new client
        await twins.aclose()
        return decoded_all(store, found), during, int(again is not None)

    found, during, again = asyncio.run(run())
    assert found == items(range(50))
    assert during - before == 2  # the blocking pool's bound, not one connection per task
    assert again == 1
    store.close()


def test_writes_drop_this_processs_client_side_copies(store: RedisStore, redis_url: str) -> None:
    cached = RedisStore(redis_url, namespace=store.namespace, expirations={Item: 60}, client_side=True)
    wait_until(lambda: cached.client_cache.tracking, timeout=5, what="the client cache to track")
    cached.store_many(Item, [({"id": 1}, Item(1, "old"))])
    assert cached.lookup(Item, {"id": 1}) == Item(1, "old")
    twins = AsyncRedisBytes(cached)
    key = keyed(1)
    blob = cached._codec.encode(Item(1, "new"), Item, key, cached._clock(), 60.0)

    async def run() -> None:
        await twins.asave_many([(key, blob)], 60.0)
        await twins.aclose()

    asyncio.run(run())
    assert cached.lookup(Item, {"id": 1}) == Item(1, "new")  # at once, not when Redis's message arrives
    cached.close()


def test_a_key_of_another_redis_type_reads_as_a_bad_entry(store: RedisStore) -> None:
    store.client.hset(f"{store.namespace}:{keyed(1)}", "field", "value")
    twins = AsyncRedisBytes(store)

    async def run() -> Any:
        blob = await twins.afetch(keyed(1))
        await twins.aclose()
        return blob

    assert decoded(store, keyed(1), asyncio.run(run())) is MISSING


def test_a_cluster_store_gets_an_async_cluster_client(cluster: PrivateCluster) -> None:  # noqa: F811
    store = RedisStore(cluster.url, cluster=True, namespace="async-cluster", expirations={Item: 60})
    twins = AsyncRedisBytes(store)

    async def run() -> list[Any]:
        await twins.asave_many([encoded(store, i) for i in range(30)], 60.0)
        found = await twins.afetch_many([keyed(i) for i in range(30)])
        assert store.lookup_many(Item, queries(range(30))) == items(range(30))
        assert await twins.adelete_many([keyed(0), keyed(1)]) == 2
        await twins.aclear()
        await twins.aclose()
        return found

    found = asyncio.run(run())
    assert decoded_all(store, found) == items(range(30))
    assert store.lookup_many(Item, queries(range(30))) == [MISSING] * 30
    store.close()
