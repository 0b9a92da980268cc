"""RedisStreamQueue on the real Redis: at-least-once past a SIGKILL, poison files, delays, back-pressure."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from datapipelines.ingest.redis_queue import QueueFullError, RedisStreamQueue, warn_if_evictable
from tests.support.ingest import wait_for
from tests.support.resilience import RedisServer, private_redis  # noqa: F401  (a fixture)

WORKER = str(Path(__file__).resolve().parents[1] / "support" / "redis_queue_worker.py")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connection:
        yield connection


def queue_for(client: redis.Redis, prefix: str, consumer: str, **options: object) -> RedisStreamQueue:
    options = {"lease": 0.5, "max_deliveries": 3, **options}
    queue = RedisStreamQueue(client, "parse", prefix=prefix, consumer=consumer, **options)  # type: ignore[arg-type]
    queue.start()
    return queue


def start_worker(redis_url: str, prefix: str, mode: str) -> subprocess.Popen[str]:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen(
        [sys.executable, WORKER, redis_url, prefix, mode], stdout=subprocess.PIPE, text=True, env=environment
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


def drain(queue: RedisStreamQueue, until: int, timeout: float = 20.0) -> dict[str, int]:
    """Read and acknowledge until ``until`` distinct payloads were seen: payload -> deliveries seen."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < until:
        assert time.monotonic() < deadline, f"only {len(seen)} of {until} entries came back"
        entries, _dead = queue.read(count=50, block=0.2)
        for entry in entries:
            seen[entry.payload] = entry.deliveries
            queue.ack(entry.id)
    return seen


def test_entries_held_by_a_killed_consumer_are_claimed_by_another(
    client: redis.Redis, redis_url: str, redis_namespace: str
) -> None:
    producer = queue_for(client, redis_namespace, "producer")
    for number in range(20):
        producer.publish(f"file-{number}")
    worker = start_worker(redis_url, redis_namespace, "hold")
    assert worker.stdout is not None
    try:
        held = [worker.stdout.readline().strip() for _ in range(20)]  # all 20 read, none acknowledged
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        stop(worker)
    assert worker.returncode == -signal.SIGKILL

    survivor = queue_for(client, redis_namespace, "survivor")
    assert survivor.read(count=50, block=0.05) == ([], [])  # the dead consumer's lease still runs
    seen = drain(survivor, until=20)
    assert sorted(seen) == sorted(f"file-{n}" for n in range(20))
    assert set(seen.values()) == {2}  # delivered to the killed consumer, then to the survivor
    assert len(held) == 20
    assert client.xpending(survivor.stream, survivor.group)["pending"] == 0
    assert survivor.outstanding() == 0  # acknowledged entries leave the stream


def test_a_file_that_kills_its_worker_every_time_is_dead_lettered_with_its_delivery_count(
    client: redis.Redis, redis_url: str, redis_namespace: str
) -> None:
    producer = queue_for(client, redis_namespace, "producer")
    producer.publish("poison")
    for number in range(10):
        producer.publish(f"file-{number}")
    deaths = 0
    while not producer.dead_letters():
        assert deaths < 6, "the poison entry was never dead-lettered"
        worker = start_worker(redis_url, redis_namespace, "poison")
        try:
            wait_for(lambda: worker.poll() is not None or producer.dead_letters(), timeout=20.0)  # noqa: B023
        finally:
            if worker.poll() == 9:
                deaths += 1
            stop(worker)
    [letter] = producer.dead_letters()
    assert letter["payload"] == "poison" and letter["deliveries"] == "3" and letter["step"] == "parse"
    assert deaths == 3
    # The others flow: read by a live consumer (some may have been read and acknowledged already).
    consumer = queue_for(client, redis_namespace, "after")
    deadline = time.monotonic() + 20
    while producer.outstanding():
        assert time.monotonic() < deadline, f"{producer.outstanding()} entries left in the stream"
        entries, dead = consumer.read(count=50, block=0.2)
        assert dead == []
        consumer.ack(*(entry.id for entry in entries))
    assert client.xpending(producer.stream, producer.group)["pending"] == 0


def test_a_delayed_retry_comes_back_when_due_and_not_before(
    client: redis.Redis, redis_namespace: str
) -> None:
    queue = queue_for(client, redis_namespace, "one")
    queue.publish("file-a")
    [entry], _ = queue.read(block=1.0)
    scheduled = time.monotonic()
    queue.retry_later(entry, 1.0, payload="file-a attempt 2")
    assert client.xpending(queue.stream, queue.group)["pending"] == 0  # settled while it waits
    assert queue.outstanding() == 0
    assert queue.read(count=10, block=0.3) == ([], [])
    again = wait_for(lambda: queue.read(count=10, block=0.05)[0], timeout=20.0)
    assert time.monotonic() - scheduled >= 0.95
    assert [e.payload for e in again] == ["file-a attempt 2"]
    assert again[0].id != entry.id and again[0].deliveries == 1
    assert client.zcard(queue.delayed) == 0


def test_due_entries_move_once_even_with_many_consumers(client: redis.Redis, redis_namespace: str) -> None:
    queue = queue_for(client, redis_namespace, "one")
    for number in range(30):
        queue.publish(f"file-{number}")
    entries, _ = queue.read(count=30)
    for entry in entries:
        queue.retry_later(entry, 0.2)
    time.sleep(0.3)
    moved = []
    threads = [threading.Thread(target=lambda: moved.append(queue.release_due())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(moved) == 30 and queue.outstanding() == 30


def test_a_full_stream_pushes_back_and_never_trims_unacknowledged_entries(
    client: redis.Redis, redis_namespace: str
) -> None:
    queue = queue_for(client, redis_namespace, "one", max_length=3)
    for number in range(3):
        queue.publish(f"file-{number}")
    with pytest.raises(QueueFullError, match="3 unacknowledged entries"):
        queue.publish("file-3", timeout=0.2)
    entries, _ = queue.read(count=2)
    assert queue.outstanding() == 3  # read but not acknowledged: still held
    with pytest.raises(QueueFullError):
        queue.publish("file-3", timeout=0.1)

    published: list[str] = []
    blocked = threading.Thread(target=lambda: published.append(queue.publish("file-3", timeout=20)))
    blocked.start()
    time.sleep(0.2)
    assert not published  # still waiting
    queue.ack(entries[0].id)
    blocked.join(20)
    assert published
    rest = drain(queue, until=3)
    assert sorted([entries[0].payload, *rest]) == [f"file-{n}" for n in range(4)]


def test_a_lease_renewed_keeps_the_entry_and_a_hand_back_frees_it_at_once(
    client: redis.Redis, redis_namespace: str
) -> None:
    holder = queue_for(client, redis_namespace, "holder")
    other = queue_for(client, redis_namespace, "other")
    holder.publish("long-file")
    [entry], _ = holder.read()
    for _ in range(4):  # 1.2 s of work, more than the 0.5 s lease
        time.sleep(0.3)
        holder.renew(entry.id)
        assert other.read(block=0.01) == ([], [])
    holder.hand_back(entry.id)
    [claimed], _ = other.read(block=0.01)
    assert claimed.payload == "long-file" and claimed.deliveries == 2


def test_an_evicting_server_is_warned_about(
    private_redis: RedisServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    with redis.Redis.from_url(private_redis.url) as server:
        assert not warn_if_evictable(server)
        server.config_set("maxmemory-policy", "allkeys-lru")
        with caplog.at_level(logging.WARNING, logger="datapipelines.ingest.redis_queue"):
            queue_for(server, "dp", "one")
    assert "maxmemory-policy is allkeys-lru" in caplog.text


def test_bad_settings_are_refused(client: redis.Redis) -> None:
    with pytest.raises(ValueError, match="max_length and max_deliveries"):
        RedisStreamQueue(client, "parse", max_length=0)
