"""A source that answers None: the caller gets None (as in 1.x) and no tier stores it.

Before, the memory tier kept the None for ever and the JSON disk tier wrote
``null`` for a dataclass type, then dropped it as a bad entry on every read.
"""

from __future__ import annotations

import dataclasses
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from datapipelines import MISSING, DataPipeline, DataSink, DataSource, NotFoundError
from datapipelines.sinks import DiskStore, MemoryStore, RedisStore


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str


class Sometimes(DataSource):
    """Answers None for every query naming ``"nobody"``, a value otherwise."""

    def __init__(self) -> None:
        self.calls = 0

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any: ...

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any: ...

    @get.register(Profile)
    def _profile(self, query: Any, context: Any = None) -> Profile | None:
        self.calls += 1
        return None if query["name"] == "nobody" else Profile(query["name"])

    @get.register(str)
    def _text(self, query: Any, context: Any = None) -> str | None:
        self.calls += 1
        return None if query["name"] == "nobody" else query["name"]


TIERS = ["memory", "disk-json", "disk-signed", "redis-json", "redis-signed"]


@pytest.fixture
def make_tier(redis_url: str) -> Iterator[Callable[[str], Any]]:
    made: list[Any] = []

    def make(kind: str) -> Any:
        secret = "k3y" if kind.endswith("signed") else None
        if kind == "memory":
            tier: Any = MemoryStore()
        elif kind.startswith("disk"):
            tier = DiskStore(tempfile.mkdtemp(prefix="none-"), serializer=None, secret=secret)
        else:
            tier = RedisStore(redis_url, namespace=f"none-{uuid.uuid4().hex}", secret=secret)
        made.append(tier)
        return tier

    yield make
    for tier in made:
        tier.clear()
        if hasattr(tier, "close"):
            tier.close()


@pytest.mark.parametrize("type_", [Profile, str], ids=["dataclass", "str"])
@pytest.mark.parametrize("kind", TIERS)
def test_none_reaches_the_caller_every_time_and_no_tier_stores_it(
    make_tier: Callable[[str], Any], kind: str, type_: Any, caplog: pytest.LogCaptureFixture
) -> None:
    tier, source = make_tier(kind), Sometimes()
    pipeline = DataPipeline([tier, source])
    nobody = {"name": "nobody"}
    assert [pipeline.get(type_, nobody) for _ in range(3)] == [None, None, None]
    assert source.calls == 3  # asked again each time: None was not cached
    assert tier.lookup(type_, nobody) is MISSING
    assert pipeline.get_batch(type_, [nobody, {"name": "ada"}]) == [None, type_("ada")]
    assert tier.lookup(type_, nobody) is MISSING
    assert tier.lookup(type_, {"name": "ada"}) == type_("ada")
    assert "dropped a bad" not in caplog.text  # nothing written that a read would reject


@pytest.mark.parametrize("kind", TIERS)
def test_a_direct_put_of_none_stores_nothing(make_tier: Callable[[str], Any], kind: str) -> None:
    tier = make_tier(kind)
    pipeline = DataPipeline([tier, Sometimes()])
    pipeline.put(Profile, None, query={"name": "ghost"})
    pipeline.put_many(Profile, [None, Profile("ada")], queries=[{"name": "ghost"}, {"name": "ada"}])
    assert tier.lookup(Profile, {"name": "ghost"}) is MISSING
    assert tier.lookup(Profile, {"name": "ada"}) == Profile("ada")


def test_none_is_never_written_back_through_three_tiers(make_tier: Callable[[str], Any]) -> None:
    tiers = [make_tier("memory"), make_tier("disk-json"), make_tier("redis-signed")]
    source = Sometimes()
    pipeline = DataPipeline([*tiers, source])
    assert pipeline.get(Profile, {"name": "nobody"}) is None
    assert pipeline.get(Profile, {"name": "nobody"}) is None
    assert source.calls == 2
    assert [tier.lookup(Profile, {"name": "nobody"}) for tier in tiers] == [MISSING] * 3


class Notebook(DataSource, DataSink):
    """A 1.x-style sink: it writes down whatever it is handed."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any: ...

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any: ...

    @DataSink.dispatch
    def put(self, type: Any, item: Any, context: Any = None) -> None: ...

    @DataSink.dispatch
    def put_many(self, type: Any, items: Any, context: Any = None) -> None: ...

    @get.register(Profile)
    def _nothing(self, query: Any, context: Any = None) -> Any:
        raise NotFoundError("a notebook never answers")

    @put.register(Profile)
    def _note(self, item: Any, context: Any = None) -> None:
        self.seen.append(item)


def test_a_1x_sink_still_receives_the_none_as_1x_handed_it() -> None:
    notebook, memory = Notebook(), MemoryStore()
    pipeline = DataPipeline([memory, notebook, Sometimes()])
    assert pipeline.get(Profile, {"name": "nobody"}) is None
    assert notebook.seen == [None]
    assert memory.lookup(Profile, {"name": "nobody"}) is MISSING
