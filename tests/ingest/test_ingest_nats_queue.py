"""What only the NATS engine has to show: the MaxDeliver advisory backstop, its thread, its errors."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import nats
import pytest

from datapipelines.ingest.nats_queue import NatsQueueError, NatsStreamQueue
from tests.support.brokers import nats_url  # noqa: F401  (a fixture)
from tests.support.ingest import wait_for


@pytest.fixture
def queue(nats_url: str) -> Iterator[NatsStreamQueue]:  # noqa: F811
    opened = NatsStreamQueue(
        nats_url, "parse", prefix=f"dp-test-{uuid.uuid4().hex[:12]}", lease=0.5, max_deliveries=1
    )
    opened.start()
    yield opened
    opened.delete()
    opened.close()


async def take_without_burying(url: str, queue: NatsStreamQueue) -> int:
    """Fetch one delivery on the step's consumer and drop it, as a reader killed mid-read would."""
    client = await nats.connect(url)
    try:
        subscription = await client.jetstream().pull_subscribe_bind(durable=queue.group, stream=queue.stream)
        [message] = await subscription.fetch(1, timeout=5)
        return int(message.metadata.num_delivered)
    finally:
        await client.close()


def test_a_last_delivery_whose_reader_died_is_dead_lettered_from_the_maxdeliver_advisory(
    queue: NatsStreamQueue,
    nats_url: str,  # noqa: F811
) -> None:
    queue.publish("poison")
    assert asyncio.run(take_without_burying(nats_url, queue)) == 1
    time.sleep(0.6)  # its lease runs out
    assert asyncio.run(take_without_burying(nats_url, queue)) == 2  # the last one MaxDeliver allows
    # The next pull finds the server giving up on it (MaxDeliver); the advisory tells every queue object.
    assert queue.read(block=0.6) == ([], [])
    [letter] = wait_for(queue.dead_letters, timeout=10)
    assert letter["payload"] == "poison" and letter["deliveries"] == "1" and letter["step"] == "parse"
    assert queue.outstanding() == 0


def test_closing_ends_the_connection_and_the_event_loop_thread(nats_url: str) -> None:  # noqa: F811
    opened = NatsStreamQueue.from_url(nats_url, "parse", prefix=f"dp-test-{uuid.uuid4().hex[:12]}")
    with opened:
        assert opened.outstanding() == 0
        assert [t for t in threading.enumerate() if t.name == f"nats-{opened.stream}"]
        opened.delete()
    assert not [t for t in threading.enumerate() if t.name == f"nats-{opened.stream}"]
    with pytest.raises(NatsQueueError, match="is closed; call start"):
        opened.outstanding()
    with opened:  # started again: a new connection and thread
        opened.publish("file-a")
        assert opened.outstanding() == 1
        opened.delete()


def test_an_unreachable_server_is_named_within_seconds() -> None:
    unreachable = NatsStreamQueue("nats://127.0.0.1:1", "parse")
    started = time.monotonic()
    with pytest.raises(NatsQueueError, match=r"cannot connect to NATS at nats://127.0.0.1:1: .*call failed"):
        unreachable.start()
    assert time.monotonic() - started < 10
    unreachable.close()
