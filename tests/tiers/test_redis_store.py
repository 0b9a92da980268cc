"""RedisStore specifics: URLs and timeouts, TTL with the value, round trips, namespaces, bad bytes."""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.connection import AbstractConnection

from datapipelines import MISSING, ConfigurationError, key_for
from datapipelines.errors import DamagedEntryError
from datapipelines.sinks.redis import RedisStore
from datapipelines.sinks.serializers import SECRET_ENV, SignedPickleSerializer
from tests.tiers.test_serializers import Exploit
from tests.tiers.test_store_contract import Item, assert_shared_cleanly, share_between_two_processes


@pytest.fixture(params=["real", "fakeredis"])
def client(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("redis_client" if request.param == "real" else "fake_redis_client")


@pytest.fixture
def store(client: Any, redis_namespace: str) -> Iterator[RedisStore]:
    store = RedisStore(client=client, namespace=redis_namespace, expirations={Item: 30})
    yield store
    store.clear()


class RoundTrips:
    """Counts what is written to Redis connections: one packed write is one round trip."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.commands: list[bytes] = []
        send = AbstractConnection.send_packed_command

        def counting(connection: Any, command: Any, check_health: bool = True) -> None:
            packed = command if isinstance(command, (bytes, str)) else b"".join(command)
            self.commands.append(packed if isinstance(packed, bytes) else packed.encode())
            send(connection, command, check_health)

        monkeypatch.setattr(AbstractConnection, "send_packed_command", counting)

    def __len__(self) -> int:
        return len(self.commands)


@pytest.fixture
def round_trips(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    store.client.ping()  # connect (and handshake) before counting
    return RoundTrips(monkeypatch)


def raw_key(store: RedisStore, type_: Any, query: dict[str, Any]) -> str:
    return f"{store.namespace}:{key_for(type_, query)}"


def test_the_url_carries_password_database_and_tls() -> None:
    store = RedisStore("redis://:pa55word@127.0.0.1:6390/3", namespace="n")
    settings = store.client.get_connection_kwargs()
    assert (settings["password"], settings["db"], settings["port"]) == ("pa55word", 3, 6390)
    assert "pa55word" not in repr(store) and "***" in repr(store)
    tls = RedisStore("rediss://example.invalid:6380/0", namespace="n")
    assert tls.client.connection_pool.connection_class is redis.SSLConnection


def test_socket_timeouts_have_sane_defaults_and_can_be_set() -> None:
    settings = RedisStore(namespace="n").client.get_connection_kwargs()
    assert (settings["socket_timeout"], settings["socket_connect_timeout"]) == (2.0, 2.0)
    store = RedisStore(namespace="n", socket_timeout=0.25, socket_connect_timeout=0.5)
    settings = store.client.get_connection_kwargs()
    assert (settings["socket_timeout"], settings["socket_connect_timeout"]) == (0.25, 0.5)


def test_bad_settings_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"http://u:\*\*\*@host"):
        RedisStore("http://u:secret@host/0")
    with pytest.raises(ConfigurationError, match="namespace"):
        RedisStore(namespace="has space")
    with pytest.raises(ConfigurationError, match="decode_responses"):
        RedisStore(client=redis.Redis(decode_responses=True))


def test_the_ttl_is_set_with_the_value_in_one_command(store: RedisStore, round_trips: RoundTrips) -> None:
    store.store_many(Item, [({"id": 1}, Item(1, "x"))])
    assert len(round_trips) == 1 and b"PX" in round_trips.commands[0]
    assert 29_000 < store.client.pttl(raw_key(store, Item, {"id": 1})) <= 30_000
    store.store_many(str, [({"id": 1}, "forever")])
    assert store.client.pttl(raw_key(store, str, {"id": 1})) == -1


def test_batches_are_one_round_trip(store: RedisStore, round_trips: RoundTrips) -> None:
    queries = [{"id": i} for i in range(100)]
    store.store_many(Item, [(q, Item(q["id"], "x")) for q in queries])
    assert len(round_trips) == 1 and round_trips.commands[0].count(b"PX") == 100
    found = store.lookup_many(Item, queries + [{"id": -5}])
    assert found[:100] == [Item(i, "x") for i in range(100)] and found[100] is MISSING
    assert len(round_trips) == 2 and round_trips.commands[1].startswith(b"*102\r\n$4\r\nMGET")
    assert store._delete_many([key_for(Item, q) for q in queries]) == 100
    assert len(round_trips) == 3


def test_namespaces_keep_stores_apart_and_clear_only_its_own(client: Any, redis_namespace: str) -> None:
    first = RedisStore(client=client, namespace=f"{redis_namespace}[a]*")
    second = RedisStore(client=client, namespace=f"{redis_namespace}[a]")
    first.store_many(Item, [({"id": 1}, Item(1, "first"))])
    second.store_many(Item, [({"id": 1}, Item(1, "second"))])
    client.set(f"{redis_namespace}:unrelated", b"keep")
    first.clear()
    assert first.lookup(Item, {"id": 1}) is MISSING
    assert second.lookup(Item, {"id": 1}) == Item(1, "second")
    assert client.get(f"{redis_namespace}:unrelated") == b"keep"
    second.clear()


def test_garbage_and_planted_pickles_are_logged_deleted_misses(store: RedisStore, caplog: Any) -> None:
    store.store_many(Item, [({"id": 2}, Item(2, "fine"))])
    store.client.set(raw_key(store, Item, {"id": 1}), pickle.dumps(Exploit()))
    store.client.set(raw_key(store, Item, {"id": 3}), b"junk")
    with caplog.at_level(logging.WARNING):
        found = store.lookup_many(Item, [{"id": 1}, {"id": 2}, {"id": 3}])
    assert found == [MISSING, Item(2, "fine"), MISSING]
    assert Exploit.ran is False
    assert caplog.text.count("dropped a bad") == 2
    assert store.client.exists(raw_key(store, Item, {"id": 1}), raw_key(store, Item, {"id": 3})) == 0


def test_keys_of_another_redis_type_are_bad_entries_not_a_failing_tier(
    store: RedisStore, caplog: Any
) -> None:
    from datapipelines import DataPipeline, DataSource, NotFoundError
    from datapipelines.breaker import CircuitBreaker

    class Origin(DataSource):
        provides = {Item}

        def get(self, type: Any, query: Any, context: Any = None) -> Any:
            return Item(query["id"], "origin")

        def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
            raise NotFoundError()

    pipeline = DataPipeline([store, Origin()], breaker=lambda: CircuitBreaker(failures=1, cooldown=60))
    store.client.hset(raw_key(store, Item, {"id": 1}), "field", "value")
    store.client.rpush(raw_key(store, Item, {"id": 2}), "a", "b")
    store.client.sadd(raw_key(store, Item, {"id": 3}), "a")
    with caplog.at_level(logging.WARNING):
        for n in (1, 2, 3):
            assert pipeline.get(Item, {"id": n}) == Item(n, "origin")
    assert caplog.text.count("dropped a bad") == 3
    state = pipeline.stats()["tiers"][repr(store)]
    assert (state["errors"], state["misses"], state["puts"], state["breaker"]) == (0, 3, 3, "closed")
    assert store.lookup(Item, {"id": 2}) == Item(2, "origin")  # the list made way for the entry
    assert store.lookup_many(Item, [{"id": 1}, {"id": 3}]) == [Item(1, "origin"), Item(3, "origin")]


def test_stores_with_another_secret_miss_instead_of_unpickling(client: Any, redis_namespace: str) -> None:
    writer = RedisStore(client=client, namespace=redis_namespace, secret="one")
    reader = RedisStore(client=client, namespace=redis_namespace, secret="two")
    writer.store_many(Item, [({"id": 1}, Item(1, "x"))])
    assert writer.lookup(Item, {"id": 1}) == Item(1, "x")
    with pytest.raises(DamagedEntryError, match="bad signature"):
        reader.lookup(Item, {"id": 1})
    assert writer.lookup(Item, {"id": 1}) is MISSING  # dropped, not left to fail again


def test_the_secret_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "from-env")
    assert isinstance(RedisStore(namespace="n").serializer, SignedPickleSerializer)


def test_two_processes_share_one_redis(redis_url: str, redis_namespace: str) -> None:
    assert_shared_cleanly(share_between_two_processes("redis", redis_url, redis_namespace))
