"""A Redis that accepts connections and never answers: each user pays at most one socket timeout
per call, and none while its breaker is open.

redis-py drops a connection that timed out and opens a new one for the next command, so the
silent server's count of connections is the number of commands that ran into a timeout.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from datapipelines import DataPipeline
from datapipelines.breaker import CircuitBreaker
from datapipelines.flight import RedisLock
from datapipelines.redis.invalidation import RedisInvalidation
from datapipelines.sinks import MemoryStore
from datapipelines.sinks.redis import RedisStore
from tests.support.resilience import CountingSource, Reading, SilentRedis, silent_redis

__all__ = ["silent_redis"]  # a fixture, used by name

TIMEOUT = 0.2


def silent_store(server: SilentRedis) -> RedisStore:
    return RedisStore(server.url, namespace="dp-test", socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)


def tier(pipeline: DataPipeline, store: RedisStore) -> dict[str, Any]:
    return pipeline.stats()["tiers"][repr(store)]


def test_a_miss_pays_one_timeout_for_lookup_and_write_back_and_none_once_the_breaker_is_open(
    silent_redis: SilentRedis,
) -> None:
    store, source = silent_store(silent_redis), CountingSource()
    pipeline = DataPipeline(
        [MemoryStore(), store, source], breaker=lambda: CircuitBreaker(failures=2, cooldown=60)
    )
    assert pipeline.get(Reading, {"id": 1}) == Reading(1, "v1")
    # The lookup timed out; the write-back into the same tier in the same call is not tried.
    assert silent_redis.connections == 1
    assert (tier(pipeline, store)["errors"], tier(pipeline, store)["skips"]) == (1, 1)

    assert pipeline.get(Reading, {"id": 2}) == Reading(2, "v1")
    assert silent_redis.connections == 2
    assert tier(pipeline, store)["breaker"] == "open"

    for n in range(3, 13):
        assert pipeline.get(Reading, {"id": n}) == Reading(n, "v1")
    pipeline.put(Reading, Reading(99, "v1"), query={"id": 99})
    assert pipeline.get_batch(Reading, [{"id": 20}, {"id": 21}]) == [Reading(20, "v1"), Reading(21, "v1")]
    assert silent_redis.connections == 2
    assert tier(pipeline, store)["errors"] == 2


def test_invalidate_pays_one_timeout_then_honours_the_open_breaker(
    silent_redis: SilentRedis, caplog: pytest.LogCaptureFixture
) -> None:
    store = silent_store(silent_redis)
    pipeline = DataPipeline(
        [MemoryStore(), store, CountingSource()], breaker=lambda: CircuitBreaker(failures=1, cooldown=60)
    )
    with caplog.at_level(logging.WARNING, logger="datapipelines.pipeline"):
        for _ in range(5):
            assert pipeline.invalidate(Reading, {"id": 1}) == 0
    assert silent_redis.connections == 1
    state = tier(pipeline, store)
    assert (state["errors"], state["skips"], state["breaker"]) == (1, 4, "open")
    assert caplog.text.count(f"{store!r} could not invalidate Reading") == 5


def test_the_redis_lock_pays_one_timeout_then_lets_misses_fetch_without_it(silent_redis: SilentRedis) -> None:
    lock = RedisLock(url=silent_redis.url, socket_timeout=TIMEOUT, wait_timeout=5.0)
    source = CountingSource()
    pipeline = DataPipeline([MemoryStore(), source], process_lock=lock)
    for n in range(6):
        assert pipeline.get(Reading, {"id": n}) == Reading(n, "v1")
    assert silent_redis.connections == 1
    assert lock.breaker.state == "open"
    assert source.calls == 6


def test_store_and_lock_on_one_silent_server_cost_one_timeout_each_per_call(
    silent_redis: SilentRedis,
) -> None:
    store = silent_store(silent_redis)
    lock = RedisLock(url=silent_redis.url, socket_timeout=TIMEOUT)
    pipeline = DataPipeline(
        [MemoryStore(), store, CountingSource()],
        process_lock=lock,
        breaker=lambda: CircuitBreaker(failures=3, cooldown=60),
    )
    assert pipeline.get(Reading, {"id": 1}) == Reading(1, "v1")
    # The store's lookup and the lock: the holder's re-check and the write-back spare the failed store.
    assert silent_redis.connections == 2
    assert tier(pipeline, store)["errors"] == 1


def test_the_invalidation_bus_pays_one_timeout_then_skips_while_its_breaker_is_open(
    silent_redis: SilentRedis,
) -> None:
    bus = RedisInvalidation(
        silent_redis.url, socket_timeout=TIMEOUT, breaker=CircuitBreaker(failures=1, cooldown=60)
    )
    try:
        for n in range(5):
            bus.publish([f"key-{n}"])
        stats = bus.stats()
        assert (stats["publish_errors"], stats["publish_skips"], stats["published"]) == (1, 4, 0)
        assert silent_redis.connections == 1
    finally:
        bus.close()
