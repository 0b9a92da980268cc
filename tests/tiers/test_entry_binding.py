"""Shared-tier entries are bound to their key: copied under another query's key, they are a miss.

Tried the way an attacker with write access (or a careless copy script) would: the
raw bytes of query A's entry are copied under query B's key, on disk and on the
real Redis, for every serializer. Signed entries are also refused when their
deadline is pushed back.
"""

from __future__ import annotations

import dataclasses
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from datapipelines import key_for
from datapipelines.errors import DamagedEntryError
from datapipelines.sinks import DiskStore, RedisStore
from datapipelines.sinks.serializers import (
    JsonSerializer,
    MsgpackSerializer,
    PickleSerializer,
    SignedPickleSerializer,
    SignedSerializer,
    make_serializer,
)


@dataclasses.dataclass(frozen=True)
class Price:
    item: str
    cents: int


A, B = {"item": "apple"}, {"item": "gold bar"}
SERIALIZERS: dict[str, Callable[[], Any]] = {
    "msgpack": lambda: "msgpack",
    "msgpack-signed": lambda: SignedSerializer(MsgpackSerializer(), "k3y"),
    "json": lambda: "json",
    "json-signed": lambda: SignedSerializer(JsonSerializer(), "k3y"),
    "signed-pickle": lambda: SignedPickleSerializer("k3y"),
    "pickle": lambda: "pickle",
}


class Raw:
    """Reads and writes a store's raw entry bytes behind its back."""

    def __init__(self, get: Callable[[str], Any], put: Callable[[str, bytes], Any]) -> None:
        self.get, self.put = get, put


@pytest.fixture(params=["disk", "redis"])
def backend(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Callable[[Any], tuple[Any, Raw]]]:
    made: list[Any] = []

    def make(serializer: Any) -> tuple[Any, Raw]:
        if request.param == "disk":
            disk = DiskStore(tempfile.mkdtemp(prefix="binding-"), serializer=serializer)
            made.append(disk)
            return disk, Raw(disk._cache.get, disk._cache.set)
        store = RedisStore(redis_url, namespace=f"binding-{uuid.uuid4().hex}", serializer=serializer)
        client = redis.Redis.from_url(redis_url)
        made.append(store)
        made.append(client)
        prefix = store.namespace + ":"
        return store, Raw(lambda key: client.get(prefix + key), lambda key, b: client.set(prefix + key, b))

    yield make
    for thing in made:
        if isinstance(thing, RedisStore):
            thing.clear()
        thing.close()


@pytest.mark.parametrize("serializer", list(SERIALIZERS), ids=list(SERIALIZERS))
def test_an_entry_copied_under_another_key_is_a_miss_and_is_dropped(
    backend: Callable[[Any], tuple[Any, Raw]], serializer: str, caplog: pytest.LogCaptureFixture
) -> None:
    store, raw = backend(SERIALIZERS[serializer]())
    store.store_many(Price, [(A, Price("apple", 50)), (B, Price("gold bar", 6_000_000))])
    raw.put(key_for(Price, B), raw.get(key_for(Price, A)))

    with pytest.raises(DamagedEntryError, match="gold bar|Price"):
        store.lookup(Price, B)  # never the apple's price
    assert raw.get(key_for(Price, B)) is None  # dropped as a bad entry
    assert "dropped a bad" in caplog.text
    assert store.lookup(Price, A) == Price("apple", 50)


@pytest.mark.parametrize("serializer", ["msgpack-signed", "json-signed", "signed-pickle"])
def test_a_signed_entry_with_a_later_deadline_is_a_miss(
    backend: Callable[[Any], tuple[Any, Raw]], serializer: str
) -> None:
    store, raw = backend(SERIALIZERS[serializer]())
    store.store_many(Price, [(A, Price("apple", 50))], seconds=60)
    blob = raw.get(key_for(Price, A))
    deadline, written_at = struct.unpack_from("!dd", blob, 4)
    raw.put(key_for(Price, A), blob[:4] + struct.pack("!dd", deadline + 10**9, written_at) + blob[20:])
    with pytest.raises(DamagedEntryError, match="bad signature"):
        store.lookup(Price, A)


def test_a_secret_signs_json_too_and_unsigned_json_is_refused_by_it() -> None:
    signed = make_serializer("json", secret="k3y")
    assert isinstance(signed, SignedSerializer) and signed.name == "json+hmac-sha256"
    assert make_serializer("json").name == "json"
    assert isinstance(make_serializer("pickle", secret="k3y"), PickleSerializer)
    with tempfile.TemporaryDirectory() as directory:
        with DiskStore(directory, serializer="json") as plain:
            plain.store_many(Price, [(A, Price("apple", 50))])
        with DiskStore(directory, serializer="json", secret="k3y") as guarded:
            with pytest.raises(DamagedEntryError, match="written as 'json "):
                guarded.lookup(Price, A)  # written by another (unsigned) serializer
            guarded.store_many(Price, [(A, Price("apple", 51))])
            assert guarded.lookup(Price, A) == Price("apple", 51)
        with DiskStore(directory, serializer="json", secret="other") as stranger:
            with pytest.raises(DamagedEntryError, match="bad signature"):
                stranger.lookup(Price, A)


def test_entries_of_the_previous_default_are_read_as_values(tmp_path: Any) -> None:
    with DiskStore(tmp_path, serializer="json") as before:
        before.store_many(Price, [(A, Price("apple", 50))])
    with DiskStore(tmp_path) as now:  # the default: MessagePack, which reads JSON entries too
        assert now.serializer.name == "msgpack"
        assert now.lookup(Price, A) == Price("apple", 50)
        now.store_many(Price, [(A, Price("apple", 51))])
    with DiskStore(tmp_path, serializer="json") as before:
        with pytest.raises(DamagedEntryError, match="written as 'msgpack"):
            before.lookup(Price, A)  # an older reader misses a newer entry, never misreads it


def test_entries_of_the_previous_format_are_misses() -> None:
    with tempfile.TemporaryDirectory() as directory, DiskStore(directory) as disk:
        key = key_for(Price, A)
        tag = f"json {key.rsplit(':', 1)[0]}".encode()
        old = b"DPE1" + struct.pack("!dd", float("inf"), 0.0) + struct.pack("!H", len(tag)) + tag
        disk._cache.set(key, old + b'{"item":"apple","cents":1}')
        with pytest.raises(DamagedEntryError, match="not a datapipelines entry"):
            disk.lookup(Price, A)
