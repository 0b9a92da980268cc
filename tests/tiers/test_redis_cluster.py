"""RedisStore against a real Redis Cluster: three masters this module starts on free loopback ports."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.cluster import ClusterPipeline, RedisCluster

from datapipelines import MISSING, ConfigurationError, DataPipeline, key_for
from datapipelines.sinks.memory import MemoryStore
from datapipelines.sinks.redis import RedisStore
from tests.support.resilience import free_port, wait_until
from tests.tiers import test_store_contract
from tests.tiers.test_redis_store import RoundTrips
from tests.tiers.test_store_contract import Item, Remote

MASTERS = 3


def _binary(name: str) -> str:
    """The path of ``name``; fails under CI when it is missing, else skips."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not on PATH: install Redis 7+ (apt-get install redis-server) to run this test"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class PrivateCluster:
    """Cluster-enabled redis-servers of our own in ``directory``, joined as masters with no replicas."""

    def __init__(self, server: str, cli: str, directory: str) -> None:
        self.server, self.cli, self.directory = server, cli, directory
        self.ports = [free_port() for _ in range(MASTERS)]
        self.url = f"redis://127.0.0.1:{self.ports[0]}/0"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.processes = [self._start_node(port) for port in self.ports]
        for port, process in zip(self.ports, self.processes, strict=True):
            answers = functools.partial(self._answers, port, process)
            wait_until(answers, timeout=10, what=f"redis-server on port {port} to answer")
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        create = [self.cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            output = done.stdout + done.stderr
            raise AssertionError(f"{' '.join(create)} failed with exit code {done.returncode}:\n{output}")
        wait_until(self._state_ok, timeout=10, what=f"cluster_state:ok on every node of {self.ports}")

    def _start_node(self, port: int) -> subprocess.Popen[bytes]:
        # The bus port is chosen too: the default, port + 10000, may be taken or above 65535.
        command = [
            self.server,
            *("--port", str(port), "--cluster-port", str(free_port()), "--bind", "127.0.0.1"),
            *("--cluster-enabled", "yes", "--cluster-config-file", f"{self.directory}/nodes-{port}.conf"),
            *("--save", "", "--appendonly", "no", "--dir", self.directory, "--daemonize", "no"),
        ]
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    @staticmethod
    def _answers(port: int, process: subprocess.Popen[bytes]) -> bool:
        if process.poll() is not None:
            error = process.stderr.read().decode() if process.stderr else ""
            raise AssertionError(f"redis-server on port {port} exited ({process.returncode}): {error}")
        try:
            with redis.Redis(port=port, socket_timeout=0.2, socket_connect_timeout=0.2) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            return False

    def _state_ok(self) -> bool:
        states = []
        for port in self.ports:
            with redis.Redis(port=port, socket_timeout=2) as client:
                states.append(client.cluster("info")["cluster_state"])
        return states == ["ok"] * MASTERS

    def keys_per_node(self, pattern: str) -> list[int]:
        """How many keys match ``pattern`` on each node, asked of each node directly."""
        counts = []
        for port in self.ports:
            with redis.Redis(port=port, socket_timeout=2) as client:
                counts.append(sum(1 for _ in client.scan_iter(match=pattern, count=1000)))
        return counts

    def clients_named(self, name: str) -> int:
        """How many connections named ``name`` the nodes have open."""
        count = 0
        for port in self.ports:
            with redis.Redis(port=port, socket_timeout=2) as client:
                count += sum(entry["name"] == name for entry in client.client_list())
        return count

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait(10)
            if process.stderr:
                process.stderr.close()
        self.processes = []


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    """A fresh 3-master Redis Cluster for this module; its processes and directory go afterwards."""
    server, cli = _binary("redis-server"), _binary("redis-cli")
    directory = tempfile.mkdtemp(prefix="dp-redis-cluster-")
    private = PrivateCluster(server, cli, directory)
    try:
        private.start()
        yield private
    finally:
        private.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster_client(cluster: PrivateCluster) -> Iterator[RedisCluster]:
    """A RedisCluster client configured by the caller, as an application would pass it in."""
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[1])
    yield client
    client.close()


@pytest.fixture(params=["cluster=True", "client=RedisCluster"])
def make_store(request: pytest.FixtureRequest, cluster: PrivateCluster, fake_clock: Any) -> Any:
    """Builds RedisStores on the cluster, from its URL or around a passed client, on the test's clock.

    Every store of one test shares a fresh namespace unless told otherwise; all are cleared and closed.
    """
    namespace = f"dp-cluster-{uuid.uuid4().hex[:12]}"
    built: list[RedisStore] = []

    def make(**options: Any) -> RedisStore:
        options.setdefault("clock", fake_clock)
        options.setdefault("namespace", namespace)
        if request.param == "cluster=True":
            store = RedisStore(cluster.url, cluster=True, **options)
        else:
            store = RedisStore(client=request.getfixturevalue("cluster_client"), **options)
        built.append(store)
        return store

    yield make
    for store in built:
        store.clear()
        store.close()


# The store contract (tests/tiers/test_store_contract.py) runs here too, through this module's make_store.
globals().update({name: test for name, test in vars(test_store_contract).items() if name.startswith("test_")})


def raw_key(store: RedisStore, type_: Any, query: dict[str, Any]) -> str:
    return f"{store.namespace}:{key_for(type_, query)}"


def connect_to_every_node(store: RedisStore) -> None:
    """Open (and handshake) a connection to each master, so that counting sees only the store's traffic."""
    store.client.ping(target_nodes=RedisCluster.ALL_NODES)


class ClientCalls:
    """Records the outermost calls a cluster client gets: its own nested calls are redis-py's business.

    A single command is recorded by its name (``GET``), a batch as ``mget_nonatomic`` or ``pipeline.execute``.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        self._depth = 0
        for owner, method, label in (
            (RedisCluster, "execute_command", None),
            (RedisCluster, "mget_nonatomic", "mget_nonatomic"),
            (ClusterPipeline, "execute", "pipeline.execute"),
        ):
            monkeypatch.setattr(owner, method, self._recording(getattr(owner, method), label))

    def _recording(self, method: Any, label: str | None) -> Any:
        @functools.wraps(method)
        def recorded(client: Any, *args: Any, **kwargs: Any) -> Any:
            if self._depth == 0:
                self.calls.append(label or args[0])
            self._depth += 1
            try:
                return method(client, *args, **kwargs)
            finally:
                self._depth -= 1

        return recorded

    def take(self) -> list[str]:
        """The calls recorded since the last take."""
        taken, self.calls = self.calls, []
        return taken


@pytest.fixture
def client_calls(monkeypatch: pytest.MonkeyPatch) -> ClientCalls:
    """Call recording on every RedisCluster client; make stores after asking for it (they bind methods)."""
    return ClientCalls(monkeypatch)


def test_both_ways_give_a_store_on_every_master(make_store: Any) -> None:
    store = make_store()
    assert isinstance(store.client, RedisCluster)
    assert len(store.client.get_primaries()) == MASTERS


def test_cluster_true_passes_the_options_and_closes_its_own_client(cluster: PrivateCluster) -> None:
    name = f"dp-owned-{uuid.uuid4().hex[:8]}"
    options = {"socket_timeout": 0.25, "socket_connect_timeout": 0.5, "client_name": name}
    store = RedisStore(cluster.url, cluster=True, namespace="n", **options)
    settings = store.client.get_connection_kwargs()
    assert (settings["socket_timeout"], settings["socket_connect_timeout"]) == (0.25, 0.5)
    connect_to_every_node(store)
    assert cluster.clients_named(name) == MASTERS
    store.close()
    wait_until(lambda: cluster.clients_named(name) == 0, timeout=2, what=f"the {name} connections to close")


def test_a_passed_cluster_client_stays_open_after_close(cluster_client: RedisCluster) -> None:
    store = RedisStore(client=cluster_client, namespace="n")
    assert store.url is None and "RedisCluster" in repr(store)
    store.close()
    assert cluster_client.ping() is True


def test_a_cluster_client_that_decodes_is_refused_naming_its_type(cluster: PrivateCluster) -> None:
    """Regression: the error named the client 'NoneType' instead of its type."""
    decoding = RedisCluster(host="127.0.0.1", port=cluster.ports[0], decode_responses=True)
    with pytest.raises(ConfigurationError, match=r"RedisStore\('RedisCluster'.*decode_responses=False"):
        RedisStore(client=decoding)
    decoding.close()


def test_an_unreachable_cluster_fails_when_the_store_is_built() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(redis.exceptions.RedisClusterException, match=address):
        RedisStore(f"redis://{address}/0", cluster=True, socket_connect_timeout=0.5)


def test_put_get_and_the_ttl_set_with_each_value(make_store: Any, fake_clock: Any) -> None:
    store = make_store(expirations={Item: 30})
    store.store_many(Item, [({"id": 0}, Item(0, "alone"))])
    store.store_many(Item, [({"id": i}, Item(i, "batch")) for i in range(1, 20)])
    store.store_many(str, [({"id": 0}, "forever")])
    assert store.lookup(Item, {"id": 0}) == Item(0, "alone")
    batch = [{"id": i} for i in range(1, 20)]
    assert store.lookup_many(Item, batch) == [Item(q["id"], "batch") for q in batch]
    ttls = [store.client.pttl(raw_key(store, Item, {"id": i})) for i in range(20)]
    assert all(0 < ttl <= 30_000 for ttl in ttls), ttls
    assert store.client.pttl(raw_key(store, str, {"id": 0})) == -1
    fake_clock.advance(31)
    assert store.lookup(Item, {"id": 0}) is MISSING
    assert store.lookup_many(Item, [{"id": 1}]) == [MISSING]
    assert store.lookup(str, {"id": 0}) == "forever"


def test_every_master_expires_entries_itself(make_store: Any) -> None:
    store = make_store()
    queries = [{"id": i} for i in range(30)]
    store.store_many(Item, [(q, Item(q["id"], "brief")) for q in queries], seconds=0.001)
    keys = [raw_key(store, Item, q) for q in queries]
    assert len({store.client.get_node_from_key(key).name for key in keys}) == MASTERS
    wait_until(lambda: store.client.exists(*keys) == 0, timeout=2, what="Redis to expire 1 ms entries")


def test_a_batch_spans_the_masters_in_one_call_and_one_round_trip_per_master(
    make_store: Any, client_calls: ClientCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, remote = make_store(expirations={Item: 60}), Remote()
    pipeline = DataPipeline([store, remote])
    queries = [{"id": i} for i in range(100)]
    keys = [raw_key(store, Item, q) for q in queries]
    assert len({store.client.keyslot(key) for key in keys}) > 50
    assert len({store.client.get_node_from_key(key).name for key in keys}) == MASTERS
    connect_to_every_node(store)
    client_calls.take()
    round_trips = RoundTrips(monkeypatch)

    expected = [Item(i, f"item {i}") for i in range(100)]
    assert pipeline.get_batch(Item, queries) == expected
    assert len(remote.calls) == 1
    assert client_calls.take() == ["mget_nonatomic", "pipeline.execute"]
    reads, writes = round_trips.commands[:MASTERS], round_trips.commands[MASTERS:]
    assert len(writes) == MASTERS and all(b"MGET" in command for command in reads)
    assert sum(command.count(b"PX") for command in writes) == 100

    assert pipeline.get_batch(Item, list(reversed(queries))) == list(reversed(expected))
    assert len(remote.calls) == 1
    assert client_calls.take() == ["mget_nonatomic"]
    assert len(round_trips) == 3 * MASTERS


def test_invalidate_removes_the_key_from_its_master(make_store: Any) -> None:
    store, remote = make_store(), Remote()
    pipeline = DataPipeline([store, remote])
    queries = [{"id": i} for i in range(30)]
    pipeline.get_batch(Item, queries)
    assert pipeline.invalidate(Item, {"id": 3}) == 1
    assert store.client.exists(raw_key(store, Item, {"id": 3})) == 0
    assert pipeline.invalidate(Item, {"id": 3}) == 0
    assert pipeline.get(Item, {"id": 3}) == Item(3, "item 3") and remote.calls[-1] == {"id": 3}
    others = [q for q in queries if q["id"] != 3]
    assert store._delete_many([key_for(Item, q) for q in others]) == len(others)
    assert store.lookup_many(Item, others) == [MISSING] * len(others)


def test_clear_empties_its_namespace_on_every_master_and_nothing_else(
    make_store: Any, cluster: PrivateCluster
) -> None:
    mine = make_store()
    # A namespace that extends mine and one with glob characters must both survive mine's clear().
    neighbours = [make_store(namespace=mine.namespace + "x"), make_store(namespace=mine.namespace + "[x]*")]
    mine.store_many(Item, [({"id": i}, Item(i, "mine")) for i in range(600)])  # more than one UNLINK batch
    for other in neighbours:
        other.store_many(Item, [({"id": i}, Item(i, other.namespace)) for i in range(100)])
    mine.client.set(f"{mine.namespace}-unrelated", b"keep")
    pattern = f"{mine.namespace}:*"
    assert all(count > 0 for count in cluster.keys_per_node(pattern))

    mine.clear()

    assert cluster.keys_per_node(pattern) == [0] * MASTERS
    for other in neighbours:
        assert other.lookup_many(Item, [{"id": i} for i in range(100)]) == [
            Item(i, other.namespace) for i in range(100)
        ]
    assert mine.client.get(f"{mine.namespace}-unrelated") == b"keep"
    mine.client.unlink(f"{mine.namespace}-unrelated")


def test_memory_then_cluster_then_source_writes_back_to_every_tier(make_store: Any) -> None:
    memory, store, remote = MemoryStore(), make_store(), Remote()
    pipeline = DataPipeline([memory, store, remote])
    queries = [{"id": i} for i in range(40)]
    expected = [Item(i, f"item {i}") for i in range(40)]
    assert pipeline.get_batch(Item, queries) == expected
    assert pipeline.get(Item, {"id": 99}) == Item(99, "item 99")
    assert len(remote.calls) == 2
    assert memory.lookup_many(Item, queries) == expected
    assert store.lookup_many(Item, queries + [{"id": 99}]) == expected + [Item(99, "item 99")]

    # Another process: its memory is empty, the cluster answers and fills it, the source is not asked.
    fresh_memory, fresh_remote = MemoryStore(), Remote()
    other = DataPipeline([fresh_memory, make_store(), fresh_remote])
    assert other.get_batch(Item, queries) == expected
    assert other.get(Item, {"id": 99}) == Item(99, "item 99")
    assert fresh_remote.calls == []
    assert fresh_memory.lookup_many(Item, queries + [{"id": 99}]) == expected + [Item(99, "item 99")]
