"""What EncodedStore gives every shared tier (disk, Redis, the dict of bytes): the five byte-level
methods move bytes as they are, every value is encoded before it reaches them, and a damaged
entry is a logged, deleted miss that the pipeline counts as ``damaged``."""

from __future__ import annotations

from typing import Any

import pytest

from datapipelines import MISSING, DataPipeline, key_for
from datapipelines.errors import DamagedEntryError
from datapipelines.sinks.encoded import EncodedStore
from tests.tiers.test_store_contract import ENCODED, Item, MakeStore, Remote, put, stores_of_one_kind


@pytest.fixture(params=ENCODED)
def make_encoded(request: pytest.FixtureRequest, tmp_path: Any, fake_clock: Any) -> Any:
    """The shared tiers only: stores of bytes behind EncodedStore."""
    yield from stores_of_one_kind(request, tmp_path, fake_clock)


def test_the_five_byte_methods_move_bytes_as_they_are(make_encoded: MakeStore) -> None:
    store = make_encoded()
    assert isinstance(store, EncodedStore)
    store.save_many([("a", b"\x00one"), ("b", b"two")], None)
    store.save_many([("b", b"2")], 60.0)
    assert store.fetch("a") == b"\x00one" and store.fetch("b") == b"2" and store.fetch("c") is None
    assert store.fetch_many(["c", "b", "a"]) == [None, b"2", b"\x00one"]
    assert store.fetch_many([]) == []
    assert store.delete_many(["a", "c"]) == 1
    assert store.fetch("a") is None
    store.clear()
    assert store.fetch_many(["a", "b"]) == [None, None]


def test_entries_are_encoded_before_they_reach_the_tier(make_encoded: MakeStore) -> None:
    store = make_encoded()
    assert isinstance(store, EncodedStore)
    put(store, Item, {"id": 1}, Item(1, "x"))
    blob = store.fetch(key_for(Item, {"id": 1}))
    assert blob is not None and blob.startswith(b"DPE2") and key_for(Item, {"id": 1}).encode() in blob


def test_a_batch_that_cannot_be_encoded_writes_nothing(make_encoded: MakeStore) -> None:
    store = make_encoded()
    with pytest.raises(ValueError, match="cannot store"):
        store.store_many(object, [({"id": 1}, {"ok": 1}), ({"id": 2}, object())])
    assert store.lookup(object, {"id": 1}) is MISSING


def test_a_damaged_entry_is_a_miss_counted_as_damaged_and_replaced(make_encoded: MakeStore) -> None:
    store, remote = make_encoded(), Remote()
    assert isinstance(store, EncodedStore)
    pipeline = DataPipeline([store, remote])
    store.save_many([(key_for(Item, {"id": i}), b"not an entry") for i in (1, 2)], None)
    with pytest.raises(DamagedEntryError, match="not a datapipelines entry"):
        store.lookup(Item, {"id": 2})
    assert store.fetch(key_for(Item, {"id": 2})) is None  # dropped, not left to fail again
    assert pipeline.get(Item, {"id": 1}) == Item(1, "item 1")
    assert pipeline.stats()["tiers"][repr(store)]["damaged"] == 1
    assert store.lookup(Item, {"id": 1}) == Item(1, "item 1")  # the source's value took its place
    store.save_many([(key_for(Item, {"id": 3}), b"junk")], None)
    assert store.lookup_many(Item, [{"id": 3}, {"id": 1}]) == [MISSING, Item(1, "item 1")]
    assert store.fetch(key_for(Item, {"id": 3})) is None
