"""What every step work queue promises, checked on Redis Streams and on NATS JetStream alike.

Each test runs once per engine against the real server of this machine, under names no other run
uses (a Redis key prefix, NATS streams deleted afterwards).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from datapipelines.ingest.redis_queue import Entry, QueueFullError, RedisStreamQueue
from tests.support.brokers import nats_url  # noqa: F401  (a fixture)
from tests.support.ingest import wait_for

WORKER = str(Path(__file__).resolve().parents[1] / "support" / "stream_queue_worker.py")


class Engine:
    """One engine under test: opens queues on step ``parse`` under one unique prefix, and cleans up."""

    def __init__(self, name: str, url: str, prefix: str) -> None:
        self.name, self.url, self.prefix = name, url, prefix
        self.opened: list[Any] = []

    def open(self, consumer: str, **options: Any) -> Any:
        options = {"lease": 0.5, "max_deliveries": 3, "prefix": self.prefix, "consumer": consumer, **options}
        if self.name == "nats":
            from datapipelines.ingest.nats_queue import NatsStreamQueue

            queue: Any = NatsStreamQueue.from_url(self.url, "parse", **options)
        else:
            queue = RedisStreamQueue(redis.Redis.from_url(self.url), "parse", **options)
        queue.start()
        self.opened.append(queue)
        return queue

    def worker(self, mode: str) -> subprocess.Popen[str]:
        environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        process = subprocess.Popen(
            [sys.executable, WORKER, self.name, self.url, self.prefix, mode],
            stdout=subprocess.PIPE,
            text=True,
            env=environment,
        )
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        return process

    def clean(self) -> None:
        if self.name == "nats" and self.opened:
            self.opened[0].delete()
        for queue in self.opened:
            close = getattr(queue, "close", None)
            if close is not None:
                close()
            else:
                queue.client.close()


@pytest.fixture(params=["redis", "nats"])
def engine(request: pytest.FixtureRequest, redis_namespace: str) -> Iterator[Engine]:
    if request.param == "nats":
        url = request.getfixturevalue("nats_url")
        prefix = f"dp-test-{uuid.uuid4().hex[:12]}"
    else:
        url, prefix = request.getfixturevalue("redis_url"), redis_namespace
    chosen = Engine(request.param, url, prefix)
    yield chosen
    chosen.clean()


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(10)
    if process.stdout is not None:
        process.stdout.close()


def drain(queue: Any, until: int, timeout: float = 20.0) -> dict[str, int]:
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


def test_a_published_entry_is_read_once_and_gone_once_acknowledged(engine: Engine) -> None:
    queue = engine.open("one")
    ids = [queue.publish(f"file-{n}") for n in range(3)]
    entries, dead = queue.read(count=10, block=1.0)
    assert dead == []
    expected = [(i, f"file-{n}", 1) for n, i in enumerate(ids)]
    assert [(e.id, e.payload, e.deliveries) for e in entries] == expected
    assert all(isinstance(e, Entry) for e in entries)
    assert queue.read(count=10, block=0.1) == ([], [])  # read, not acknowledged: nobody else gets them
    queue.ack(*(e.id for e in entries))
    assert queue.outstanding() == 0


def test_outstanding_counts_unread_and_unacknowledged_entries_only(engine: Engine) -> None:
    queue = engine.open("one")
    for number in range(5):
        queue.publish(f"file-{number}")
    assert queue.outstanding() == 5
    entries, _ = queue.read(count=2)
    assert queue.outstanding() == 5  # two read, still held until acknowledged
    queue.ack(entries[0].id)
    assert queue.outstanding() == 4


def test_entries_held_by_a_killed_consumer_go_to_another_once_their_lease_runs_out(engine: Engine) -> None:
    producer = engine.open("producer")
    for number in range(20):
        producer.publish(f"file-{number}")
    worker = engine.worker("hold")
    assert worker.stdout is not None
    try:
        held = [worker.stdout.readline().strip() for _ in range(20)]  # all 20 read, none acknowledged
        os.kill(worker.pid, signal.SIGKILL)
    finally:
        stop(worker)
    assert worker.returncode == -signal.SIGKILL and len(held) == 20

    survivor = engine.open("survivor")
    assert survivor.read(count=50, block=0.05) == ([], [])  # the dead consumer's lease still runs
    seen = drain(survivor, until=20)
    assert sorted(seen) == sorted(f"file-{n}" for n in range(20))
    assert set(seen.values()) == {2}  # delivered to the killed consumer, then to the survivor
    assert survivor.outstanding() == 0


def test_a_redelivered_entry_comes_alone(engine: Engine) -> None:
    first = engine.open("first")
    for number in range(4):
        first.publish(f"file-{number}")
    taken, _ = first.read(count=4)
    assert len(taken) == 4  # and never acknowledged: the lease runs out on all four
    time.sleep(0.6)
    second = engine.open("second")
    batches = []
    while len(batches) < 4:
        entries, _ = second.read(count=10, block=0.5)
        if entries:
            batches.append([e.payload for e in entries])
            second.ack(*(e.id for e in entries))
    assert all(len(batch) == 1 for batch in batches)  # a file that may kill its worker takes no other
    assert sorted(b[0] for b in batches) == [f"file-{n}" for n in range(4)]


def test_a_renewed_lease_keeps_the_entry_and_a_hand_back_frees_it_at_once(engine: Engine) -> None:
    holder = engine.open("holder", lease=1.0)  # 0.7 s of margin per renewal on a loaded machine
    other = engine.open("other", lease=1.0)
    holder.publish("long-file")
    [entry], _ = holder.read()
    for _ in range(5):  # 1.5 s of work, more than the 1 s lease
        time.sleep(0.3)
        holder.renew(entry.id)
        assert other.read(block=0.01) == ([], [])
    holder.hand_back(entry.id)
    started = time.monotonic()
    [claimed] = wait_for(lambda: other.read(block=0.05)[0], timeout=5.0)
    assert time.monotonic() - started < 0.4  # well before a lease would have run out
    assert claimed.payload == "long-file" and claimed.deliveries == 2


def test_a_file_that_kills_its_worker_every_time_is_dead_lettered_with_its_delivery_count(
    engine: Engine,
) -> None:
    producer = engine.open("producer")
    producer.publish("poison")
    for number in range(10):
        producer.publish(f"file-{number}")
    deaths = 0
    while not producer.dead_letters():
        assert deaths < 6, "the poison entry was never dead-lettered"
        worker = engine.worker("poison")
        try:
            wait_for(lambda: worker.poll() is not None or producer.dead_letters(), timeout=20.0)  # noqa: B023
        finally:
            if worker.poll() == 9:
                deaths += 1
            stop(worker)
    [letter] = producer.dead_letters()
    assert letter["payload"] == "poison" and letter["deliveries"] == "3" and letter["step"] == "parse"
    assert deaths == 3
    consumer = engine.open("after")  # the others flow (some may have been acknowledged already)
    deadline = time.monotonic() + 20
    while producer.outstanding():
        assert time.monotonic() < deadline, f"{producer.outstanding()} entries left in the stream"
        entries, dead = consumer.read(count=50, block=0.2)
        assert dead == []
        consumer.ack(*(entry.id for entry in entries))
    assert len(producer.dead_letters()) == 1


def test_a_delayed_retry_comes_back_when_due_and_not_before(engine: Engine) -> None:
    queue = engine.open("one")
    queue.publish("file-a")
    [entry], _ = queue.read(block=1.0)
    scheduled = time.monotonic()
    queue.retry_later(entry, 1.0, payload="file-a attempt 2")
    assert queue.outstanding() == 0  # settled while it waits
    assert queue.read(count=10, block=0.3) == ([], [])
    again = wait_for(lambda: queue.read(count=10, block=0.05)[0], timeout=20.0)
    assert time.monotonic() - scheduled >= 0.95
    assert [e.payload for e in again] == ["file-a attempt 2"]
    assert again[0].id != entry.id and again[0].deliveries == 1  # a retry is not a redelivery


def test_due_retries_move_once_even_with_many_consumers(engine: Engine) -> None:
    queues = [engine.open(f"c{n}") for n in range(2)]
    for number in range(30):
        queues[0].publish(f"file-{number}")
    entries, _ = queues[0].read(count=30)
    assert len(entries) == 30
    for entry in entries:
        queues[0].retry_later(entry, 0.2)
    time.sleep(0.3)
    moved: list[int] = []
    threads = [threading.Thread(target=lambda q=q: moved.append(q.release_due())) for q in queues * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(moved) == 30 and queues[0].outstanding() == 30
    assert sorted(drain(queues[1], until=30)) == sorted(f"file-{n}" for n in range(30))


def test_a_full_stream_pushes_back_and_never_drops_unacknowledged_entries(engine: Engine) -> None:
    queue = engine.open("one", max_length=3)
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


def test_impossible_settings_are_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="max_length and max_deliveries"):
        engine.open("one", max_length=0)


def test_a_queue_started_again_with_other_limits_works_by_them(engine: Engine) -> None:
    small = engine.open("one", max_length=2)
    for number in range(2):
        small.publish(f"file-{number}")
    with pytest.raises(QueueFullError):
        small.publish("file-2", timeout=0.1)
    larger = engine.open("two", max_length=4)  # a new deployment's settings
    for number in range(2, 4):
        larger.publish(f"file-{number}")
    assert larger.outstanding() == 4
    assert sorted(drain(larger, until=4)) == [f"file-{n}" for n in range(4)]


def test_a_shorter_lease_set_by_a_later_start_applies_to_entries_read_before(engine: Engine) -> None:
    patient = engine.open("patient", lease=30.0)
    patient.publish("file-a")
    [entry], _ = patient.read()
    hasty = engine.open("hasty", lease=0.5)
    started = time.monotonic()
    [again] = wait_for(lambda: hasty.read(block=0.1)[0], timeout=10.0)
    assert again.payload == "file-a" and again.deliveries == 2
    assert time.monotonic() - started < 5.0  # not the 30 s the first reader was given
