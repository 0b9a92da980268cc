"""RedisStore(client_side=True): copies answer repeated hits, and every change to Redis reaches them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from datapipelines import MISSING, ConfigurationError, DataPipeline
from datapipelines.sinks.redis import RedisStore
from tests.core.test_fork import in_a_child
from tests.support.resilience import RedisServer, private_redis, wait_until  # noqa: F401  (a fixture)
from tests.tiers.test_redis_cluster import PrivateCluster, cluster  # noqa: F401  (a fixture)
from tests.tiers.test_store_contract import Item

ROOT = Path(__file__).resolve().parents[2]

# A second process: reads "put <id> <name>" / "delete <id>" lines, answers "done" after each.
WRITER = """
import sys
sys.path.insert(0, sys.argv[2])
from tests.tiers.test_store_contract import Item
from datapipelines.sinks.redis import RedisStore
store = RedisStore(sys.argv[1], namespace=sys.argv[3], expirations={Item: 60})
for line in sys.stdin:
    verb, ident, *name = line.split()
    if verb == "put":
        store.store_many(Item, [({"id": int(ident)}, Item(int(ident), name[0]))])
    else:
        store.delete(Item, {"id": int(ident)})
    print("done", flush=True)
"""


class Writer:
    """Another process that writes and deletes Items under a namespace, one command at a time."""

    def __init__(self, url: str, namespace: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(ROOT), namespace],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip

    def __call__(self, command: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        assert self.process.stdout.readline().strip() == "done", f"the writer failed on {command!r}"

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        assert self.process.wait(30) == 0


def tracked_store(url: str, namespace: str, **options: Any) -> RedisStore:
    """A client-cached store, once Redis tracks it (before that, reads keep no copies)."""
    store = RedisStore(url, namespace=namespace, expirations={Item: 60}, client_side=True, **options)
    wait_until(lambda: store.client_cache.tracking, timeout=5, what="the client cache to track")
    return store


@pytest.fixture
def store(redis_url: str, redis_namespace: str) -> Iterator[RedisStore]:
    store = tracked_store(redis_url, redis_namespace)
    yield store
    store.clear()
    store.close()


def gets(server: RedisServer) -> int:
    """How many GET and MGET commands the private server has run so far."""
    with redis.Redis(port=server.port) as client:
        stats = client.info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("get", "mget"))


def put(store: RedisStore, ident: int, name: str) -> None:
    """Write Item(ident, name) through ``store``, and wait for Redis's message about it.

    A copy made before that message arrives is dropped by it; after, it stays.
    """
    cache = store.client_cache
    heard = cache.invalidations if cache is not None and cache.tracking else None
    store.store_many(Item, [({"id": ident}, Item(ident, name))])
    if heard is not None:
        wait_until(lambda: cache.invalidations > heard, timeout=2, what="Redis's message about the write")


def hold(store: RedisStore, *expected: Item) -> None:
    """Read ``expected`` until the client cache holds them as its only copies."""
    queries = [{"id": item.id} for item in expected]

    def held() -> bool:
        return store.lookup_many(Item, queries) == list(expected) and len(store.client_cache) == len(expected)

    wait_until(held, timeout=2, what=f"copies of {expected}")


def test_a_repeated_hit_is_answered_without_a_command(private_redis: RedisServer) -> None:  # noqa: F811
    store = tracked_store(private_redis.url, "cc")
    pipeline = DataPipeline([store])
    put(store, 1, "one")
    assert pipeline.get(Item, {"id": 1}) == Item(1, "one")
    hold(store, Item(1, "one"))
    before = gets(private_redis)
    for _ in range(100):
        assert pipeline.get(Item, {"id": 1}) == Item(1, "one")
    assert gets(private_redis) == before
    assert len(store.client_cache) == 1
    store.close()


def test_another_process_writing_and_deleting_reaches_the_copy(store: RedisStore, redis_url: str) -> None:
    put(store, 7, "first")
    hold(store, Item(7, "first"))
    writer = Writer(redis_url, store.namespace)
    try:
        writer("put 7 second")
        wait_until(lambda: store.lookup(Item, {"id": 7}) == Item(7, "second"), timeout=2,
                   what="the other process's write to reach this one")  # fmt: skip
        writer("delete 7")
        wait_until(lambda: store.lookup(Item, {"id": 7}) is MISSING, timeout=2,
                   what="the other process's delete to reach this one")  # fmt: skip
    finally:
        writer.close()


def test_a_write_of_this_store_is_read_back_at_once(store: RedisStore) -> None:
    put(store, 1, "old")
    hold(store, Item(1, "old"))
    store.store_many(Item, [({"id": 1}, Item(1, "new"))])  # no waiting for Redis's message about it
    assert store.lookup(Item, {"id": 1}) == Item(1, "new")
    assert store.delete(Item, {"id": 1})
    assert store.lookup(Item, {"id": 1}) is MISSING


def test_batches_use_the_copies_and_read_only_what_they_miss(private_redis: RedisServer) -> None:  # noqa: F811
    store = tracked_store(private_redis.url, "cc")
    for ident in range(4):
        put(store, ident, f"n{ident}")
    hold(store, Item(0, "n0"))
    queries = [{"id": ident} for ident in range(5)]
    first = store.lookup_many_entries(Item, queries)
    assert [e if e is MISSING else e[0] for e in first] == [Item(i, f"n{i}") for i in range(4)] + [MISSING]
    assert all(e is MISSING or 0 <= e[1] < 5 for e in first)
    hold(store, *[Item(i, f"n{i}") for i in range(4)])
    before = gets(private_redis)
    again = store.lookup_many_entries(Item, queries[:4])
    assert [e[0] for e in again] == [Item(i, f"n{i}") for i in range(4)]
    assert gets(private_redis) == before
    assert len(store.client_cache) == 4
    store.close()


def test_a_copy_dies_at_the_entry_deadline(redis_url: str, redis_namespace: str, fake_clock: Any) -> None:
    store = tracked_store(redis_url, redis_namespace, clock=fake_clock)
    put(store, 1, "short-lived")
    hold(store, Item(1, "short-lived"))
    fake_clock.advance(59)
    assert store.lookup_entry(Item, {"id": 1}) == (Item(1, "short-lived"), 59)
    assert store.lookup_fresh(Item, {"id": 1}, max_age=30) is MISSING  # a policy's age counts from the write
    fake_clock.advance(2)  # past the 60 s expiry by the store's clock; Redis still has the key
    assert len(store.client_cache) == 1
    assert store.lookup(Item, {"id": 1}) is MISSING
    assert len(store.client_cache) == 0
    store.clear()
    store.close()


def test_the_copies_are_bounded(redis_url: str, redis_namespace: str) -> None:
    store = tracked_store(redis_url, redis_namespace, client_side_maxsize=10)
    for ident in range(50):
        put(store, ident, f"n{ident}")
    for ident in range(50):
        assert store.lookup(Item, {"id": ident}) == Item(ident, f"n{ident}")
    assert len(store.client_cache) == 10
    store.clear()
    assert len(store.client_cache) == 0
    store.close()


def test_a_flush_drops_every_copy(private_redis: RedisServer) -> None:  # noqa: F811
    store = tracked_store(private_redis.url, "cc")
    put(store, 1, "one")
    hold(store, Item(1, "one"))
    with redis.Redis(port=private_redis.port) as client:
        client.flushall()
    wait_until(lambda: len(store.client_cache) == 0, timeout=2, what="the flush to drop the copies")
    assert store.lookup(Item, {"id": 1}) is MISSING
    store.close()


def test_after_the_server_dies_no_copy_is_served(private_redis: RedisServer) -> None:  # noqa: F811
    store = tracked_store(private_redis.url, "cc", socket_timeout=0.5, socket_connect_timeout=0.5)
    pipeline = DataPipeline([store])
    put(store, 1, "before")
    assert pipeline.get(Item, {"id": 1}) == Item(1, "before")
    hold(store, Item(1, "before"))
    private_redis.kill()
    wait_until(lambda: not store.client_cache.tracking, timeout=2, what="the lost connection to be noticed")
    assert len(store.client_cache) == 0
    with pytest.raises(redis.ConnectionError):
        store.lookup(Item, {"id": 1})
    private_redis.start()  # the same port, empty: what was copied before must not come back
    wait_until(lambda: store.client_cache.tracking, timeout=5, what="tracking to resume")
    assert store.lookup(Item, {"id": 1}) is MISSING
    put(store, 1, "after")
    hold(store, Item(1, "after"))
    store.close()


def test_a_server_that_stops_answering_drops_the_copies(private_redis: RedisServer) -> None:  # noqa: F811
    store = tracked_store(private_redis.url, "cc", socket_timeout=0.2)
    put(store, 1, "one")
    hold(store, Item(1, "one"))
    assert private_redis.process is not None
    pid = private_redis.process.pid
    os.kill(pid, signal.SIGSTOP)  # the socket stays open; only the heartbeat can tell
    try:
        wait_until(lambda: not store.client_cache.tracking, timeout=3, what="the silence to be noticed")
        assert len(store.client_cache) == 0
        with pytest.raises(redis.TimeoutError):
            store.lookup(Item, {"id": 1})
    finally:
        os.kill(pid, signal.SIGCONT)
    store.close()


def test_threads_reading_while_another_process_writes_end_on_the_last_write(
    store: RedisStore, redis_url: str
) -> None:
    put(store, 1, "v0")
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                assert store.lookup(Item, {"id": 1}) is not MISSING
        except BaseException as error:  # reported by the test below
            errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for reader in readers:
        reader.start()
    writer = Writer(redis_url, store.namespace)
    try:
        for version in range(1, 101):
            writer(f"put 1 v{version}")
    finally:
        writer.close()
        stop.set()
        for reader in readers:
            reader.join(10)
    assert errors == []
    hold(store, Item(1, "v100"))
    assert store.client_cache.tracking


def test_a_read_that_a_change_overtakes_keeps_no_copy(
    store: RedisStore, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(store, 1, "old")
    fetched, release = threading.Event(), threading.Event()
    fetch = store.fetch

    def slow_fetch(key: str) -> Any:
        blob = fetch(key)  # the old bytes, read before the change below
        fetched.set()
        assert release.wait(5)
        return blob

    monkeypatch.setattr(store, "fetch", slow_fetch)
    found: list[Any] = []
    reader = threading.Thread(target=lambda: found.append(store.lookup(Item, {"id": 1})))
    reader.start()
    assert fetched.wait(5)
    heard = store.client_cache.invalidations
    put(RedisStore(redis_url, namespace=store.namespace, expirations={Item: 60}), 1, "new")
    wait_until(lambda: store.client_cache.invalidations > heard, timeout=2, what="the change's message")
    release.set()
    reader.join(5)
    assert found == [Item(1, "old")]  # what Redis held when it was read
    assert len(store.client_cache) == 0  # but not kept: the change's message came first
    monkeypatch.undo()
    assert store.lookup(Item, {"id": 1}) == Item(1, "new")


def test_close_stops_tracking_and_reads_go_to_redis(store: RedisStore) -> None:
    put(store, 1, "one")
    hold(store, Item(1, "one"))
    listener = store.client_cache._listener
    store.client_cache.close()
    assert not listener.is_alive() and not store.client_cache.tracking
    assert len(store.client_cache) == 0
    assert store.lookup(Item, {"id": 1}) == Item(1, "one")
    assert len(store.client_cache) == 0  # no copy without tracking


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() exists on POSIX only")
def test_a_forked_child_starts_empty_and_tracks_on_a_connection_of_its_own(
    store: RedisStore, redis_url: str
) -> None:
    put(store, 1, "parent")
    hold(store, Item(1, "parent"))

    def child() -> bool:
        cache = store.client_cache
        assert len(cache) == 0  # the parent's copies hear nothing in this process
        wait_until(lambda: cache.tracking, timeout=5, what="the child to track")
        hold(store, Item(1, "parent"))
        other = RedisStore(redis_url, namespace=store.namespace, expirations={Item: 60})
        put(other, 1, "child")
        wait_until(lambda: store.lookup(Item, {"id": 1}) == Item(1, "child"), timeout=2,
                   what="another client's write to reach the child's copies")  # fmt: skip
        return True

    in_a_child(child)
    # The parent's tracking connection is untouched by the child, and heard the child's write.
    assert store.client_cache.tracking
    wait_until(lambda: store.lookup(Item, {"id": 1}) == Item(1, "child"), timeout=2,
               what="the child's write to reach the parent's copies")  # fmt: skip


def test_a_cluster_store_refuses_a_client_cache(cluster: PrivateCluster) -> None:  # noqa: F811
    with pytest.raises(ConfigurationError, match="client_side=True tracks one server, not a cluster"):
        RedisStore(cluster.url, cluster=True, namespace="cc", client_side=True)
