"""DiskStore specifics: persistence, diskcache's own expiry, one transaction per batch, bad bytes."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest

from datapipelines import MISSING, key_for
from datapipelines.errors import DamagedEntryError
from datapipelines.sinks.disk import DiskStore
from tests.tiers.test_serializers import Exploit
from tests.tiers.test_store_contract import Item, assert_shared_cleanly, share_between_two_processes


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DiskStore]:
    with DiskStore(tmp_path / "cache") as disk:
        yield disk


def raw_cache(store: DiskStore) -> diskcache.Cache:
    """The directory opened with plain diskcache, as another program would."""
    return diskcache.Cache(store.directory)


def test_values_outlive_the_store_object(tmp_path: Path) -> None:
    with DiskStore(tmp_path / "cache") as first:
        first.store_many(Item, [({"id": 1}, Item(1, "kept"))])
    with DiskStore(tmp_path / "cache") as second:
        assert second.lookup(Item, {"id": 1}) == Item(1, "kept")


def test_diskcache_expires_the_entry_too(tmp_path: Path) -> None:
    with DiskStore(tmp_path / "cache", expirations={Item: 60}) as store:
        store.store_many(Item, [({"id": 1}, Item(1, "x"))])
        _, expire_time = raw_cache(store).get(key_for(Item, {"id": 1}), expire_time=True)
    assert time.time() + 55 < expire_time <= time.time() + 60


def test_size_limit_evicts_the_oldest_entries(tmp_path: Path) -> None:
    value = bytes(40_000)  # large enough for diskcache to keep it in a file
    with DiskStore(tmp_path / "cache", size_limit=2**20, serializer="pickle") as store:
        for i in range(60):
            store.store_many(bytes, [({"id": i}, value)])
        found = store.lookup_many(bytes, [{"id": i} for i in range(60)])
    assert found[-5:] == [value] * 5
    assert found[0] is MISSING and sum(v is MISSING for v in found) > 30


def count_transactions(store: DiskStore) -> list[str]:
    statements: list[str] = []
    connection: sqlite3.Connection = store._cache._con  # this thread's connection
    connection.set_trace_callback(statements.append)
    return statements


def test_a_batch_is_one_transaction_each_way(store: DiskStore) -> None:
    queries = [{"id": i} for i in range(100)]
    statements = count_transactions(store)
    store.store_many(Item, [(q, Item(q["id"], "x")) for q in queries])
    assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
    statements.clear()
    assert len([v for v in store.lookup_many(Item, queries) if v is not MISSING]) == 100
    assert [s for s in statements if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
    assert sum(s.startswith("SELECT rowid, expire_time") for s in statements) == 100  # diskcache's get


def test_a_pickle_planted_in_the_directory_is_never_unpickled(store: DiskStore, caplog: Any) -> None:
    key = key_for(Item, {"id": 1})
    raw_cache(store).set(key, Exploit())
    with caplog.at_level(logging.WARNING), pytest.raises(DamagedEntryError, match="not a datapipelines"):
        store.lookup(Item, {"id": 1})
    assert Exploit.ran is False
    assert "dropped a bad" in caplog.text and key in caplog.text
    assert key not in raw_cache(store)


def test_garbage_entries_are_logged_deleted_misses(store: DiskStore, caplog: Any) -> None:
    store.store_many(Item, [({"id": 2}, Item(2, "fine"))])
    cache = raw_cache(store)
    cache.set(key_for(Item, {"id": 1}), b"\x00garbage")
    cache.set(key_for(Item, {"id": 3}), "text, not bytes")
    with caplog.at_level(logging.WARNING):
        found = store.lookup_many(Item, [{"id": 1}, {"id": 2}, {"id": 3}])
    assert found == [MISSING, Item(2, "fine"), MISSING]
    assert caplog.text.count("dropped a bad") == 2
    assert len(cache) == 1


def test_an_entry_signed_with_another_secret_is_a_miss(tmp_path: Path, caplog: Any) -> None:
    with DiskStore(tmp_path / "c", secret="old") as old, DiskStore(tmp_path / "c", secret="new") as new:
        old.store_many(Item, [({"id": 1}, Item(1, "x"))])
        assert old.lookup(Item, {"id": 1}) == Item(1, "x")
        with caplog.at_level(logging.WARNING), pytest.raises(DamagedEntryError, match="bad signature"):
            new.lookup(Item, {"id": 1})
        assert "bad signature" in caplog.text
        assert old.lookup(Item, {"id": 1}) is MISSING  # dropped, not left to fail again


def test_two_processes_share_one_directory(tmp_path: Path) -> None:
    assert_shared_cleanly(share_between_two_processes("disk", str(tmp_path / "shared")))
