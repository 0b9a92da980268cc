"""Every extension point is checked once, when the pipeline is built: accepted, or refused by name."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from datapipelines import (
    ConfigurationError,
    DataPipeline,
    DataSink,
    DataSource,
    NotFoundError,
    Policy,
    ResponseRecorder,
)
from datapipelines.protocols import (
    BatchSource,
    EntryLookup,
    InProcessStore,
    InvalidationBackend,
    KeyedStore,
    SessionRecorder,
    methods,
)
from datapipelines.sinks import MemoryStore


@dataclass(frozen=True)
class Reading:
    id: int


class Api(DataSource):
    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @get.register(Reading)
    def get_reading(self, query: Any, context: Any = None) -> Reading:
        return Reading(query["id"])

    @get_many.register(Reading)
    def get_readings(self, query: Any, context: Any = None) -> list[Reading]:
        return [Reading(q["id"]) for q in query["queries"]]


def refused(elements: list[Any], **options: Any) -> str:
    with pytest.raises(ConfigurationError) as error:
        DataPipeline(elements, **options)
    return str(error.value)


def test_protocol_methods_include_their_bases() -> None:
    assert methods(InProcessStore) == methods(KeyedStore)
    assert "store_many" in methods(KeyedStore)
    assert methods(SessionRecorder) == ("open_session", "close_session")


# -- keyed store and in-process store ------------------------------------------------------
class NoBulkStore(MemoryStore):
    store_many = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "NoBulkStore()"


def test_a_store_without_a_keyed_method_is_refused_by_name() -> None:
    message = refused([NoBulkStore(), Api()])
    assert message == (
        "NoBulkStore() is a Store, so it must satisfy KeyedStore, but it has no store_many() method"
    )


class Shelf(DataSource, DataSink):
    """A 1.x cache tier that claims to live in process memory, but is no keyed store."""

    in_process = True

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSink.dispatch
    def put(self, type: Any, item: Any, context: Any = None) -> None:
        pass

    @DataSink.dispatch
    def put_many(self, type: Any, items: Any, context: Any = None) -> None:
        pass


def test_an_in_process_store_is_known_as_one_and_a_non_store_claiming_it_is_refused() -> None:
    memory = MemoryStore()
    pipeline = DataPipeline([memory, Api()])
    assert pipeline.local_stores() == [memory]
    message = refused([Shelf(), Api()])
    assert message == (
        "Shelf sets in_process = True, so it must satisfy InProcessStore, but it has no lookup() method"
    )


# -- a tier that tells ages ---------------------------------------------------------------------
class AgedShelf(Shelf):
    in_process = False

    def __init__(self) -> None:
        self.entries: dict[int, tuple[Reading, float]] = {}

    def lookup_entry(self, type: Any, query: Mapping[str, Any]) -> tuple[Reading, float]:
        try:
            return self.entries[query["id"]]
        except KeyError:
            raise NotFoundError() from None


def test_a_tier_telling_ages_is_under_the_policy_and_a_broken_one_is_refused() -> None:
    shelf, api = AgedShelf(), Api()
    shelf.entries[1] = (Reading(-1), 100.0)  # older than the ttl: fetched again
    shelf.entries[2] = (Reading(-2), 1.0)
    pipeline = DataPipeline([shelf, api], policies={Reading: Policy(ttl=10)})
    assert pipeline.routes(Reading)[0].aged
    assert pipeline.get(Reading, {"id": 1}) == Reading(1)
    assert pipeline.get(Reading, {"id": 2}) == Reading(-2)

    class Broken(Shelf):
        in_process = False
        lookup_entry = "not a method"

    message = refused([Broken(), api])
    assert message == (
        "Broken has lookup_entry, so it must satisfy EntryLookup, but it has no lookup_entry() method"
    )
    assert methods(EntryLookup) == ("lookup_entry",)


# -- response and session recorders -------------------------------------------------------
class Notebook(Shelf):
    """Records responses and sessions; a ResponseRecorder by registration."""

    in_process = False

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def record(self, response: Any, context: Any = None) -> None:
        self.seen.append(response)

    def open_session(self, session_id: str, name: str, meta: Mapping[str, Any]) -> None:
        self.seen.append(("open", name))

    def close_session(self, session_id: str) -> None:
        self.seen.append(("close", session_id))


def test_a_registered_recorder_records_sessions_and_one_lacking_a_method_is_refused() -> None:
    ResponseRecorder.register(Notebook)
    notebook = Notebook()
    pipeline = DataPipeline([notebook, Api()])
    assert pipeline.recorders == (notebook,)
    with pipeline.session("nightly") as session_id:
        pass
    assert notebook.seen == [("open", "nightly"), ("close", session_id)]

    class HalfNotebook(Shelf):
        in_process = False

        def record(self, response: Any, context: Any = None) -> None:
            pass

    ResponseRecorder.register(HalfNotebook)
    message = refused([HalfNotebook(), Api()])
    assert message == (
        "HalfNotebook is a ResponseRecorder, so it must satisfy SessionRecorder, "
        "but it has no open_session() method"
    )


def test_a_method_called_record_makes_nothing_a_recorder() -> None:
    class Ledger(Shelf):
        in_process = False

        def record(self, type: Any, item: Any, *, query: Mapping[str, Any]) -> None:
            raise AssertionError("a ledger is no response recorder")

    assert DataPipeline([Ledger(), Api()]).recorders == ()


# -- batch source ---------------------------------------------------------------------------
def test_a_batch_source_gets_one_call_and_one_without_a_dispatched_get_many_is_refused() -> None:
    class Batching(Api):
        batch_get_many = True

    pipeline = DataPipeline([Batching()])
    assert pipeline.routes(Reading)[0].tier.batch_types == frozenset({Reading})
    assert pipeline.get_batch(Reading, [{"id": 1}, {"id": 2}]) == [Reading(1), Reading(2)]
    assert pipeline.stats()["sources"]["Batching"]["calls"] == 1

    class PlainBatching(Api):
        batch_get_many = True

        def get_many(self, type: Any, query: Any, context: Any = None) -> Any:  # type: ignore[override]
            return []

    message = refused([PlainBatching()])
    assert message.startswith("PlainBatching sets batch_get_many = True, so its get_many must be")
    assert methods(BatchSource) == ("get_many",)


# -- invalidation backend ------------------------------------------------------------------
class Board:
    """Remembers what it was told: an invalidation backend without a broker."""

    def __init__(self) -> None:
        self.attached: list[Any] = []
        self.published: list[Sequence[str]] = []

    def attach(self, pipeline: Any) -> None:
        self.attached.append(pipeline)

    def publish(self, keys: Sequence[str], pipeline: Any = None) -> None:
        self.published.append(keys)


def test_an_invalidation_backend_is_attached_once_and_one_lacking_publish_is_refused() -> None:
    board = Board()
    pipeline = DataPipeline([MemoryStore(), Api()], invalidation=board)
    assert board.attached == [pipeline]
    pipeline.invalidate(Reading, {"id": 1})
    assert len(board.published) == 1 and len(board.published[0]) == 1

    class Deaf:
        def attach(self, pipeline: Any) -> None:
            pass

    message = refused([MemoryStore(), Api()], invalidation=Deaf())
    assert message.endswith(
        "is the invalidation= option, so it must satisfy InvalidationBackend, but it has no publish() method"
    )
    assert methods(InvalidationBackend) == ("attach", "publish")
