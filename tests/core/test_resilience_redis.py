"""Resilience with real processes and a real Redis: the process lock, and a Redis killed mid-run."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import redis

from datapipelines import DataPipeline
from datapipelines.breaker import CircuitBreaker
from datapipelines.flight import RedisLock
from datapipelines.sinks import MemoryStore
from datapipelines.sinks.redis import RedisStore
from tests.support.resilience import CountingSource, Reading, RedisServer, free_port, private_redis

__all__ = ["private_redis"]  # a fixture, used by name

Q = {"id": 1}
SPAWN = multiprocessing.get_context("spawn")


def shared_pipeline(url: str, namespace: str, source: CountingSource, **lock: Any) -> DataPipeline:
    """memory -> RedisStore -> source, with the cross-process lock."""
    store = RedisStore(url, namespace=namespace, socket_timeout=1.0, socket_connect_timeout=1.0)
    process_lock = RedisLock(url=url, namespace=f"{namespace}:lock", poll=0.01, **lock)
    return DataPipeline([MemoryStore(), store, source], process_lock=process_lock)


def _lock_worker(url: str, namespace: str, barrier: Any, results: Any) -> None:
    source = CountingSource(delay=0.3)
    pipeline = shared_pipeline(url, namespace, source)
    barrier.wait()
    value = pipeline.get(Reading, Q)
    results.put((source.calls, value))


def test_four_processes_with_the_redis_lock_call_the_source_once(
    redis_url: str, redis_namespace: str
) -> None:
    barrier, results = SPAWN.Barrier(4, timeout=60), SPAWN.Queue()
    workers = [
        SPAWN.Process(target=_lock_worker, args=(redis_url, redis_namespace, barrier, results))
        for _ in "abcd"
    ]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    assert sum(calls for calls, _ in outcomes) == 1
    assert {value for _, value in outcomes} == {Reading(1, "v1")}


class StuckSource(CountingSource):
    """A source that says it was entered, then never answers (its process is killed)."""

    def __init__(self, entered: Any) -> None:
        super().__init__()
        self.entered = entered

    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        self.entered.set()
        time.sleep(60)
        raise AssertionError("the stuck source should have been killed")


def _stuck_holder(url: str, namespace: str, entered: Any) -> None:
    shared_pipeline(url, namespace, StuckSource(entered), ttl=2.0).get(Reading, Q)


def test_nobody_waits_forever_for_a_stuck_or_dead_holder(redis_url: str, redis_namespace: str) -> None:
    client = redis.Redis.from_url(redis_url)
    locks = f"{redis_namespace}:lock:*"
    entered = SPAWN.Event()
    holder = SPAWN.Process(target=_stuck_holder, args=(redis_url, redis_namespace, entered))
    holder.start()
    try:
        assert entered.wait(60), "the holder never reached its source"
        acquired = time.monotonic()
        # A stuck holder: the waiter gives up after wait_timeout and calls the source itself.
        impatient_source = CountingSource()
        impatient = shared_pipeline(redis_url, redis_namespace, impatient_source, wait_timeout=0.2)
        assert impatient.get(Reading, Q) == Reading(1, "v1")
        assert impatient_source.calls == 1
        assert any(client.scan_iter(match=locks)), "the holder's lock should still be there"
    finally:
        holder.kill()
        holder.join(10)
    impatient.invalidate(Reading, Q)
    # A dead holder: its lock expires (ttl 2 s) and the next caller fetches, long before wait_timeout.
    patient_source = CountingSource()
    patient = shared_pipeline(redis_url, redis_namespace, patient_source, wait_timeout=30)
    assert patient.get(Reading, Q) == Reading(1, "v1")
    assert patient_source.calls == 1
    assert 1.0 < time.monotonic() - acquired < 30
    assert not any(client.scan_iter(match=locks))
    client.close()


def test_a_dead_redis_behind_the_process_lock_does_not_fail_gets() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    source = CountingSource()
    lock = RedisLock(url=dead, namespace="dp-test-lock", wait_timeout=0.5)
    pipeline = DataPipeline([MemoryStore(), source], process_lock=lock)
    assert pipeline.get(Reading, Q) == Reading(1, "v1")


def test_a_redis_killed_mid_run_fails_no_get_and_its_hits_resume_after_a_restart(
    private_redis: RedisServer,
) -> None:
    source = CountingSource()
    # A small memory tier in front, so most gets reach Redis.
    store = RedisStore(private_redis.url, namespace="dp-test", socket_timeout=0.2, socket_connect_timeout=0.2)
    pipeline = DataPipeline(
        [MemoryStore(maxsize=16), store, source], breaker=lambda: CircuitBreaker(failures=3, cooldown=0.05)
    )
    phases: list[dict[str, Any]] = []
    failed, slowest = 0, 0.0
    for n in range(10_000):
        if n in (3_000, 6_000):
            phases.append(pipeline.stats()["tiers"][repr(store)])
            pipeline.reset_stats()
            private_redis.kill() if n == 3_000 else private_redis.start()
        started = time.perf_counter()
        try:
            assert pipeline.get(Reading, {"id": n % 400}) == Reading(n % 400, "v1")
        except Exception:
            failed += 1
        slowest = max(slowest, time.perf_counter() - started)
    phases.append(pipeline.stats()["tiers"][repr(store)])
    up, down, back = phases
    assert failed == 0
    assert slowest < 1.0  # a dead Redis costs at most a socket timeout per call
    assert up["hits"] > 2_000 and up["errors"] == 0
    assert down["errors"] > 0 and down["skips"] > 0
    assert back["hits"] > 2_000 and back["breaker"] == "closed"
