"""Cross-process invalidation over Redis pub/sub: RedisInvalidation with real processes and servers."""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import time
import traceback
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import redis

from datapipelines import MISSING, DataPipeline, key_for
from datapipelines.breaker import CircuitBreaker
from datapipelines.redis.invalidation import RedisInvalidation
from datapipelines.sinks import MemoryStore
from tests.support.resilience import (
    CountingSource,
    Reading,
    RedisServer,
    free_port,
    private_redis,
    wait_until,
)

__all__ = ["private_redis"]  # a fixture, used by name

Q = {"id": 1}
SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def channel() -> str:
    return f"dp-test-invalidate-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def buses() -> Iterator[list[RedisInvalidation]]:
    """Buses made by ``bus()`` in a test, closed afterwards."""
    made: list[RedisInvalidation] = []
    yield made
    for bus in made:
        bus.close()


def make_bus(buses: list[RedisInvalidation], client: Any, channel: str) -> RedisInvalidation:
    bus = RedisInvalidation(client=client, channel=channel)
    buses.append(bus)
    return bus


def attached(bus: RedisInvalidation) -> tuple[DataPipeline, MemoryStore]:
    """A memory -> source pipeline on ``bus``, its memory already holding Q."""
    memory = MemoryStore()
    pipeline = DataPipeline([memory, CountingSource()], invalidation=bus)
    assert bus.wait_subscribed(10)
    pipeline.get(Reading, Q)
    return pipeline, memory


def held(memory: MemoryStore, query: Any = Q) -> Any:
    return memory.lookup(Reading, query)


# -- one process --------------------------------------------------------------------------------
def test_a_message_from_another_process_drops_the_key_from_every_attached_pipeline(
    redis_client: Any, channel: str, buses: list[RedisInvalidation]
) -> None:
    bus = make_bus(buses, redis_client, channel)
    (first_pipeline, first), (second_pipeline, second) = attached(bus), attached(bus)
    other = MemoryStore()
    other.store_many(Reading, [({"id": 2}, Reading(2, "kept"))])
    message = {"origin": "another process", "keys": [key_for(Reading, Q), key_for(Reading, {"id": 2})]}
    redis_client.publish(channel, json.dumps(message))
    wait_until(lambda: held(first) is MISSING and held(second) is MISSING, what="both memory tiers to drop Q")
    assert bus.stats()["received"] == 1 and bus.stats()["dropped"] == 2
    assert held(other, {"id": 2}) == Reading(2, "kept")  # not attached: untouched
    del first_pipeline, second_pipeline  # a pipeline that is gone is forgotten, and so are its stores
    gc.collect()
    first.store_many(Reading, [(Q, Reading(1, "v1"))])
    redis_client.publish(channel, json.dumps(message))
    wait_until(lambda: bus.stats()["received"] == 2, what="the second message")
    assert held(first) == Reading(1, "v1")


def test_this_process_updates_its_other_stores_at_once_and_ignores_its_own_messages(
    redis_client: Any, channel: str, buses: list[RedisInvalidation]
) -> None:
    first_bus, second_bus = make_bus(buses, redis_client, channel), make_bus(buses, redis_client, channel)
    (first, first_memory), (_, second_memory) = attached(first_bus), attached(second_bus)

    first.invalidate(Reading, Q)
    assert held(first_memory) is MISSING and held(second_memory) is MISSING  # no round trip needed

    second_memory.store_many(Reading, [(Q, Reading(1, "old"))])
    first.put(Reading, Reading(1, "new"), query=Q)
    assert held(second_memory) is MISSING
    for bus in (first_bus, second_bus):
        wait_until(lambda bus=bus: bus.stats()["received"] == 2, what="both messages to come back")
        assert bus.stats()["ignored"] == 2
    assert held(first_memory) == Reading(1, "new")  # the publisher's own store keeps what it was given


def test_publish_that_names_its_pipeline_spares_only_that_pipelines_stores(
    redis_client: Any, channel: str, buses: list[RedisInvalidation]
) -> None:
    bus = make_bus(buses, redis_client, channel)
    (first, first_memory), (_, second_memory) = attached(bus), attached(bus)
    bus.publish([key_for(Reading, Q)], pipeline=first)
    assert held(first_memory) == Reading(1, "v1")
    assert held(second_memory) is MISSING


def test_a_put_through_one_pipeline_drops_the_key_from_another_pipeline_on_the_same_bus(
    redis_client: Any, channel: str, buses: list[RedisInvalidation]
) -> None:
    bus = make_bus(buses, redis_client, channel)
    (first, first_memory), (_, second_memory) = attached(bus), attached(bus)
    first.put(Reading, Reading(1, "new"), query=Q)
    assert held(first_memory) == Reading(1, "new")
    assert held(second_memory) is MISSING


def test_publishing_while_redis_is_down_never_raises_and_warns_once(
    channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = RedisInvalidation(f"redis://127.0.0.1:{free_port()}/0", channel=channel, socket_timeout=0.2)
    try:
        pipeline = DataPipeline([MemoryStore(), CountingSource()], invalidation=bus)
        with caplog.at_level(logging.WARNING, logger="datapipelines.invalidation"):
            for n in range(5):
                pipeline.put(Reading, Reading(n, "new"), query={"id": n})
                pipeline.invalidate(Reading, {"id": n})
        assert pipeline.get(Reading, Q) == Reading(1, "v1")
        stats = bus.stats()
        assert stats["publish_errors"] == 1 and stats["publish_skips"] == 9 and stats["published"] == 0
        assert caplog.text.count("Could not publish") == 1
        wait_until(lambda: bus.stats()["reconnects"] >= 1, what="the subscriber to retry")
        assert not bus.subscribed
    finally:
        bus.close()


def test_malformed_messages_are_counted_and_ignored(
    redis_client: Any, channel: str, buses: list[RedisInvalidation]
) -> None:
    bus = make_bus(buses, redis_client, channel)
    _, memory = attached(bus)
    for junk in (b"\x80not json", b'{"origin": "x"}', b'{"origin": "x", "keys": [1, 2]}'):
        redis_client.publish(channel, junk)
    redis_client.publish(channel, json.dumps({"origin": "x", "keys": [key_for(Reading, Q)]}))
    wait_until(lambda: held(memory) is MISSING, what="the good message after the junk")
    assert bus.stats()["bad_messages"] == 3


def test_close_stops_listening(redis_client: Any, channel: str) -> None:
    bus = RedisInvalidation(client=redis_client, channel=channel)
    _, memory = attached(bus)
    bus.close()
    assert not bus.subscribed
    redis_client.publish(channel, json.dumps({"origin": "x", "keys": [key_for(Reading, Q)]}))
    time.sleep(0.05)  # long enough for a listener, were there one, to act
    assert held(memory) == Reading(1, "v1")
    assert bus.stats()["received"] == 0


# -- two processes ------------------------------------------------------------------------------
def _listener(url: str, channel: str, commands: Any, replies: Any, options: dict[str, Any]) -> None:
    """A second process: memory -> source, on the bus; answers the test's commands."""
    memory = MemoryStore()
    bus = RedisInvalidation(url, channel=channel, **options)
    pipeline = DataPipeline([memory, CountingSource("child")], invalidation=bus)
    while True:
        command, ids = commands.get(timeout=120)
        if command == "stop":
            break
        try:
            if command == "subscribed":
                reply: Any = bus.wait_subscribed(30)
            elif command == "fill":
                reply = [pipeline.get(Reading, {"id": n}) for n in ids]
            elif command == "watch":
                replies.put(("ok", "watching"))
                wait_until(
                    lambda ids=ids: all(held(memory, {"id": n}) is MISSING for n in ids),
                    timeout=10,
                    what=f"ids {ids} to be dropped",
                )
                reply = time.time()
            elif command == "put":
                for n in ids:
                    pipeline.put(Reading, Reading(n, "child"), query={"id": n})
                reply = None
            elif command == "held":
                reply = [held(memory, {"id": n}) is not MISSING for n in ids]
            else:
                reply = bus.stats()
            replies.put(("ok", reply))
        except Exception:
            replies.put(("error", traceback.format_exc()))
    bus.close()


class Listener:
    """The test's handle on a listener process."""

    def __init__(self, url: str, channel: str, **options: Any) -> None:
        self.commands, self.replies = SPAWN.Queue(), SPAWN.Queue()
        self.process = SPAWN.Process(
            target=_listener, args=(url, channel, self.commands, self.replies, options)
        )
        self.process.start()

    def reply(self) -> Any:
        status, value = self.replies.get(timeout=60)
        assert status == "ok", f"the listener process failed:\n{value}"
        return value

    def ask(self, command: str, ids: Sequence[int] = ()) -> Any:
        self.commands.put((command, list(ids)))
        return self.reply()

    def seconds_to_drop(self, ids: list[int], action: Any) -> float:
        """Wall-clock seconds from ``action()`` until the listener's memory tier no longer holds ``ids``."""
        assert self.ask("watch", ids) == "watching"
        started = time.time()
        action()
        return float(self.reply()) - started

    def __enter__(self) -> Listener:
        assert self.ask("subscribed") is True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.commands.put(("stop", []))
        self.process.join(30)
        if self.process.exitcode is None:
            self.process.kill()


def parent(url: str, channel: str, **options: Any) -> tuple[DataPipeline, MemoryStore, RedisInvalidation]:
    memory = MemoryStore()
    bus = RedisInvalidation(url, channel=channel, **options)
    pipeline = DataPipeline([memory, CountingSource()], invalidation=bus)
    assert bus.wait_subscribed(10)
    return pipeline, memory, bus


def test_a_second_process_sees_invalidations_and_puts_within_100_ms(redis_url: str, channel: str) -> None:
    pipeline, memory, bus = parent(redis_url, channel)
    try:
        with Listener(redis_url, channel) as child:
            child.ask("fill", [1, 2])
            assert child.seconds_to_drop([1], lambda: pipeline.invalidate(Reading, {"id": 1})) < 0.1
            assert (
                child.seconds_to_drop([2], lambda: pipeline.put(Reading, Reading(2, "new"), query={"id": 2}))
                < 0.1
            )

            # The other way round: the child's put drops our copy, and the child keeps its own.
            pipeline.get(Reading, {"id": 3})
            child.ask("put", [3])
            wait_until(lambda: held(memory, {"id": 3}) is MISSING, timeout=1, what="our copy of id 3 to go")
            wait_until(
                lambda: child.ask("stats")["ignored"] == 1, what="the child to get its own message back"
            )
            assert child.ask("held", [3]) == [True]
    finally:
        bus.close()


def test_invalidation_survives_a_redis_restart(private_redis: RedisServer, channel: str) -> None:
    url = private_redis.url
    # A cool-down far longer than the test: publishing must not wait for it once Redis is back.
    pipeline, _, bus = parent(url, channel, breaker=CircuitBreaker(failures=1, cooldown=600))
    watcher = redis.Redis.from_url(url, socket_timeout=1)
    try:
        with Listener(url, channel) as child:
            child.ask("fill", [1, 2])
            private_redis.kill()
            pipeline.invalidate(Reading, {"id": 9})  # cannot be sent while Redis is down; must not raise
            assert bus.stats()["publish_errors"] == 1
            private_redis.start()
            wait_until(
                lambda: watcher.pubsub_numsub(channel) == [(channel.encode(), 2)],
                timeout=30,
                what="both processes to subscribe again",
            )
            assert child.ask("subscribed") is True
            # What was published during the outage is unknown: the child dropped everything.
            assert child.ask("held", [1, 2]) == [False, False]
            assert child.ask("stats")["reconnects"] >= 1
            assert bus.wait_subscribed(30)
            child.ask("fill", [1])
            # Redis is back and we listen again: the invalidation goes out, breaker or not.
            child.seconds_to_drop([1], lambda: pipeline.invalidate(Reading, {"id": 1}))
            assert bus.stats()["publish_skips"] == 0
    finally:
        bus.close()
        watcher.close()


def test_invalidations_skipped_while_the_breaker_was_open_are_sent_afterwards(
    redis_url: str, channel: str
) -> None:
    # The breaker is open as after a failed publish, while Redis (and the listener) are fine.
    breaker = CircuitBreaker(failures=1, cooldown=0.5)
    pipeline, _, bus = parent(redis_url, channel, breaker=breaker)
    try:
        with Listener(redis_url, channel) as child:
            child.ask("fill", [1, 2, 3])
            breaker.failure()
            assert child.ask("watch", [1, 2]) == "watching"
            pipeline.invalidate(Reading, {"id": 1})
            pipeline.put(Reading, Reading(2, "new"), query={"id": 2})
            assert bus.stats()["publish_skips"] == 2
            child.reply()  # dropped once the cool-down let the kept keys out
            assert child.ask("held", [1, 2, 3]) == [False, False, True]
            wait_until(lambda: bus.stats()["resent"] == 1, what="the resend to be counted")
    finally:
        bus.close()


def test_more_skipped_keys_than_are_kept_make_listeners_clear_everything(
    redis_url: str, channel: str
) -> None:
    breaker = CircuitBreaker(failures=1, cooldown=0.5)
    pipeline, _, bus = parent(redis_url, channel, breaker=breaker, max_pending=2)
    try:
        with Listener(redis_url, channel) as child:
            child.ask("fill", [1, 2, 3, 4])
            breaker.failure()
            assert child.ask("watch", [1, 2, 3, 4]) == "watching"
            for n in (1, 2, 3):
                pipeline.invalidate(Reading, {"id": n})
            child.reply()  # everything went, id 4 too: nobody knows what else was missed
            wait_until(lambda: bus.stats()["resent"] == 1, what="the resend to be counted")
    finally:
        bus.close()
