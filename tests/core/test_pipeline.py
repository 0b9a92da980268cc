"""DataPipeline behaviour: order, write-back, get_many, put, errors, batches, invalidation, hit path."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import Any

import pytest

import datapipelines.plan as plan_module
from datapipelines import (
    ConfigurationError,
    DataPipeline,
    DataSink,
    DataSource,
    DataTransformer,
    NoConversionError,
    NotFoundError,
    current_session,
)
from datapipelines.plan import TypeGraph
from datapipelines.sinks import MemoryStore


class Weather:
    def __init__(self, city: str, source: str = "") -> None:
        self.city, self.source = city, source

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Weather) and (self.city, self.source) == (other.city, other.source)

    def __repr__(self) -> str:
        return f"Weather({self.city!r}, {self.source!r})"


class Payload:
    def __init__(self, city: str) -> None:
        self.city = city


class Unrelated:
    pass


class Source(DataSource):
    """Answers ``types`` (Weather by default) for the cities it knows; counts every call."""

    def __init__(self, name: str, cities: tuple[str, ...] = ("paris",), types: Any = (Weather,)) -> None:
        self.name, self.cities, self.types = name, set(cities), set(types)
        self.gets: list[dict[str, Any]] = []
        self.many: list[dict[str, Any]] = []

    def __repr__(self) -> str:
        return f"Source({self.name})"

    @property
    def provides(self) -> Any:
        return self.types

    def _make(self, type: Any, city: str) -> Any:
        return Weather(city, self.name) if type is Weather else type(city)

    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        self.gets.append(dict(query))
        if query["city"] not in self.cities:
            raise NotFoundError()
        return self._make(type, query["city"])

    def get_many(self, type: Any, query: Any, context: Any = None) -> Iterator[Any]:
        self.many.append(dict(query))
        if not self.cities:
            raise NotFoundError()
        return iter([self._make(type, city) for city in sorted(self.cities)])


class Sink(DataSink):
    """Accepts ``types`` (None: any type) and records what it is given."""

    def __init__(self, name: str, types: Any = None) -> None:
        self.name, self.types = name, types
        self.items: list[tuple[Any, Any]] = []

    def __repr__(self) -> str:
        return f"Sink({self.name})"

    @property
    def accepts(self) -> Any:
        return super().accepts if self.types is None else set(self.types)

    @DataSink.dispatch
    def put(self, type: Any, item: Any, context: Any = None) -> None:
        self.items.append((type, item))

    @DataSink.dispatch
    def put_many(self, type: Any, items: Any, context: Any = None) -> None:
        for item in items:
            self.items.append((type, item))


class PayloadToWeather(DataTransformer):
    @DataTransformer.dispatch
    def transform(self, target_type: Any, value: Any, context: Any = None) -> Any:
        pass

    @transform.register(Payload, Weather)
    def parse(self, value: Payload, context: Any = None) -> Weather:
        return Weather(value.city, "parsed")


class BatchSource(DataSource):
    """Answers a get_batch in one get_many call: {"queries": [...]} -> aligned results."""

    batch_get_many = True

    def __init__(self, cities: set[str]) -> None:
        self.cities = cities
        self.calls: list[Any] = []

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @get.register(Weather)
    def get_weather(self, query: Any, context: Any = None) -> Weather:
        self.calls.append(("get", dict(query)))
        if query["city"] not in self.cities:
            raise NotFoundError()
        return Weather(query["city"], "batch")

    @get_many.register(Weather)
    def get_weathers(self, query: Any, context: Any = None) -> list[Weather | None]:
        self.calls.append(("get_many", [dict(q) for q in query["queries"]]))
        return [Weather(q["city"], "batch") if q["city"] in self.cities else None for q in query["queries"]]


PARIS = {"city": "paris"}


# -- order and write-back -----------------------------------------------------------


def test_sources_are_tried_in_order_and_the_first_answer_wins() -> None:
    first, second, third = Source("first", ()), Source("second"), Source("third")
    pipeline = DataPipeline([first, second, third])
    assert pipeline.get(Weather, PARIS) == Weather("paris", "second")
    assert (len(first.gets), len(second.gets), len(third.gets)) == (1, 1, 0)


def test_a_value_is_written_back_only_into_sinks_before_the_answering_source() -> None:
    early, middle, late = Sink("early"), Sink("middle"), Sink("late")
    miss, hit, after = Source("miss", ()), Source("hit"), Source("after")
    pipeline = DataPipeline([early, miss, middle, hit, late, after])
    value = pipeline.get(Weather, PARIS)
    assert early.items == [(Weather, value)]
    assert middle.items == [(Weather, value)]
    assert late.items == []
    assert after.gets == []


def test_sources_and_sinks_that_lack_the_type_are_skipped() -> None:
    other_sink, weather_sink = Sink("other", {Unrelated}), Sink("weather", {Weather})
    other_source, weather_source = Source("other", types={Unrelated}), Source("weather")
    pipeline = DataPipeline([other_sink, weather_sink, other_source, weather_source])
    value = pipeline.get(Weather, PARIS)
    assert other_source.gets == []
    assert other_sink.items == []
    assert weather_sink.items == [(Weather, value)]


def test_cassiopeia_reads_sources_with_the_sinks_before_them_and_the_set_of_sinks() -> None:
    sink_a, store, source = Sink("a"), MemoryStore(), Source("s")
    pipeline = DataPipeline([sink_a, store, source])
    assert pipeline._sources == [(store, {sink_a}), (source, {sink_a, store})]
    assert all(isinstance(sinks, set) for _, sinks in pipeline._sources)
    assert pipeline._sinks == {sink_a, store}


def test_a_pipeline_needs_sources_or_sinks() -> None:
    with pytest.raises(ConfigurationError):
        DataPipeline([])
    with pytest.raises(ConfigurationError, match="int"):
        DataPipeline([Source("s"), 3])  # type: ignore[list-item]


# -- get_many -------------------------------------------------------------------------


def test_get_many_returns_a_list_and_writes_every_item_back() -> None:
    sink, source = Sink("sink"), Source("src", ("lyon", "paris"))
    result = DataPipeline([sink, source]).get_many(Weather, {"all": True})
    assert result == [Weather("lyon", "src"), Weather("paris", "src")]
    assert sink.items == [(Weather, w) for w in result]
    assert source.many == [{"all": True}]


def test_streaming_get_many_writes_each_item_back_as_it_is_consumed() -> None:
    sink, source = Sink("sink"), Source("src", ("lyon", "paris"))
    stream = DataPipeline([sink, source]).get_many(Weather, {"all": True}, streaming=True)
    assert sink.items == []
    first = next(iter(stream))
    assert sink.items == [(Weather, first)]
    rest = list(stream)
    assert [first, *rest] == [Weather("lyon", "src"), Weather("paris", "src")]
    assert len(sink.items) == 2


def test_get_many_tries_the_next_source_and_raises_not_found_when_none_has_them() -> None:
    empty, full = Source("empty", ()), Source("full", ("paris",))
    assert DataPipeline([empty, full]).get_many(Weather, {}) == [Weather("paris", "full")]
    with pytest.raises(NotFoundError, match="Weather"):
        DataPipeline([Source("empty", ())]).get_many(Weather, {})


def test_streaming_get_many_converts_and_feeds_raw_sinks_raw_items() -> None:
    raw_sink, any_sink = Sink("raw", {Payload}), Sink("any")
    source = Source("raw-src", ("lyon",), types={Payload})
    stream = DataPipeline([raw_sink, any_sink, source], [PayloadToWeather()]).get_many(
        Weather, {}, streaming=True
    )
    assert (raw_sink.items, any_sink.items) == ([], [])
    assert list(stream) == [Weather("lyon", "parsed")]
    assert [t for t, _ in raw_sink.items] == [Payload]
    assert any_sink.items == [(Weather, Weather("lyon", "parsed"))]


# -- put --------------------------------------------------------------------------------


def test_put_and_put_many_reach_every_sink_that_accepts_the_type() -> None:
    weather_sink, any_sink, other_sink = Sink("w", {Weather}), Sink("any"), Sink("o", {Unrelated})
    pipeline = DataPipeline([weather_sink, any_sink, other_sink, Source("s")])
    paris = Weather("paris")
    pipeline.put(Weather, paris)
    pipeline.put_many(Weather, (w for w in [paris, paris]))
    assert weather_sink.items == [(Weather, paris)] * 3
    assert any_sink.items == [(Weather, paris)] * 3
    assert other_sink.items == []


def test_put_of_a_type_no_sink_accepts_stores_nothing_and_raises_nothing() -> None:
    sink = Sink("w", {Weather})
    pipeline = DataPipeline([sink, Source("s")])
    pipeline.put(Unrelated, Unrelated())
    pipeline.put_many(Unrelated, [Unrelated()])
    assert sink.items == []


def test_put_with_query_keys_the_value_in_a_store() -> None:
    store, source = MemoryStore(), Source("s")
    pipeline = DataPipeline([store, source])
    mine = Weather("paris", "mine")
    pipeline.put(Weather, mine, query=PARIS)
    assert pipeline.get(Weather, PARIS) is mine
    assert source.gets == []


def test_put_with_query_from_keys_the_value_by_the_item() -> None:
    store, source = MemoryStore(), Source("s")
    pipeline = DataPipeline([store, source], query_from={Weather: lambda w: {"city": w.city}})
    mine = Weather("paris", "mine")
    pipeline.put(Weather, mine)
    pipeline.put_many(Weather, [Weather("lyon", "mine")])
    assert pipeline.get(Weather, PARIS) is mine
    assert pipeline.get(Weather, {"city": "lyon"}) == Weather("lyon", "mine")
    assert source.gets == []


def test_put_without_any_query_into_a_store_is_a_clear_error() -> None:
    pipeline = DataPipeline([MemoryStore(), Source("s")])
    with pytest.raises(ConfigurationError) as error:
        pipeline.put(Weather, Weather("paris"))
    assert "Weather" in str(error.value) and "query" in str(error.value)


def test_streaming_get_many_with_query_from_fills_a_store_item_by_item() -> None:
    store, source = MemoryStore(), Source("s", ("lyon", "paris"))
    pipeline = DataPipeline([store, source], query_from={Weather: lambda w: {"city": w.city}})
    stream = iter(pipeline.get_many(Weather, {"all": True}, streaming=True))
    next(stream)
    assert len(store) == 1
    list(stream)
    assert pipeline.get(Weather, PARIS) == Weather("paris", "s")
    assert source.gets == []


# -- errors a user can act on ------------------------------------------------------------


def test_not_found_error_names_the_type_the_query_and_the_sources_tried() -> None:
    pipeline = DataPipeline([MemoryStore(), Source("alpha", ()), Source("beta", ())])
    with pytest.raises(NotFoundError) as error:
        pipeline.get(Weather, {"city": "atlantis"})
    message = str(error.value)
    for expected in ("Weather", "atlantis", "MemoryStore", "Source(alpha)", "Source(beta)"):
        assert expected in message, (expected, message)
    assert error.value.type is Weather
    assert error.value.query == {"city": "atlantis"}
    assert len(error.value.tried) == 3


def test_no_conversion_error_names_the_requested_and_the_provided_types() -> None:
    pipeline = DataPipeline([Source("s", types={Weather, Payload})])
    with pytest.raises(NoConversionError) as error:
        pipeline.get(Unrelated, PARIS)
    message = str(error.value)
    assert "Unrelated" in message and "Weather" in message and "Payload" in message
    with pytest.raises(NoConversionError):
        pipeline.get_many(Unrelated, PARIS)
    with pytest.raises(NoConversionError):
        pipeline.get_batch(Unrelated, [PARIS])


# -- refresh, only_cached, invalidate ---------------------------------------------------


def test_refresh_skips_the_caches_but_still_writes_back() -> None:
    store, source = MemoryStore(), Source("fresh")
    pipeline = DataPipeline([store, source])
    pipeline.put(Weather, Weather("paris", "old"), query=PARIS)
    assert pipeline.get(Weather, PARIS) == Weather("paris", "old")
    assert pipeline.get(Weather, PARIS, refresh=True) == Weather("paris", "fresh")
    assert pipeline.get(Weather, PARIS) == Weather("paris", "fresh")
    assert len(source.gets) == 1


def test_only_cached_never_calls_a_source() -> None:
    store, source = MemoryStore(), Source("s")
    pipeline = DataPipeline([store, source])
    with pytest.raises(NotFoundError) as error:
        pipeline.get(Weather, PARIS, only_cached=True)
    assert "Source(s)" not in str(error.value)
    assert source.gets == []
    pipeline.get(Weather, PARIS)
    assert pipeline.get(Weather, PARIS, only_cached=True) == Weather("paris", "s")
    assert len(source.gets) == 1


def test_invalidate_removes_the_value_from_every_store() -> None:
    fast, slow, source = MemoryStore(), MemoryStore(), Source("s")
    pipeline = DataPipeline([fast, slow, source])
    pipeline.get(Weather, PARIS)
    assert (len(fast), len(slow)) == (1, 1)
    assert pipeline.invalidate(Weather, PARIS) == 2
    assert (len(fast), len(slow)) == (0, 0)
    assert pipeline.invalidate(Weather, PARIS) == 0
    pipeline.get(Weather, PARIS)
    assert len(source.gets) == 2


def test_invalidate_also_removes_the_raw_value_a_store_kept_before_conversion() -> None:
    raw_store = MemoryStore(types={Payload})
    source = Source("raw", ("paris",), types={Payload})
    pipeline = DataPipeline([raw_store, source], [PayloadToWeather()])
    pipeline.get(Weather, PARIS)
    assert len(raw_store) == 1
    assert pipeline.invalidate(Weather, PARIS) == 1
    assert len(raw_store) == 0


# -- get_batch ---------------------------------------------------------------------------


def test_get_batch_is_aligned_and_asks_each_tier_only_for_its_misses() -> None:
    store, source = MemoryStore(), Source("s", ("lyon", "paris", "nice"))
    pipeline = DataPipeline([store, source])
    pipeline.put(Weather, Weather("paris", "cached"), query=PARIS)
    queries = [{"city": "lyon"}, PARIS, {"city": "nice"}]
    assert pipeline.get_batch(Weather, queries) == [
        Weather("lyon", "s"),
        Weather("paris", "cached"),
        Weather("nice", "s"),
    ]
    assert source.gets == [{"city": "lyon"}, {"city": "nice"}]
    assert pipeline.get_batch(Weather, queries)[0] == Weather("lyon", "s")
    assert len(source.gets) == 2, "the batch wrote its finds back into the store"


def test_get_batch_asks_a_get_many_handler_once_for_all_misses() -> None:
    store, source = MemoryStore(), BatchSource({"lyon", "nice"})
    pipeline = DataPipeline([store, source])
    pipeline.put(Weather, Weather("paris", "cached"), query=PARIS)
    result = pipeline.get_batch(Weather, [{"city": "lyon"}, PARIS, {"city": "nice"}])
    assert result == [Weather("lyon", "batch"), Weather("paris", "cached"), Weather("nice", "batch")]
    assert source.calls == [("get_many", [{"city": "lyon"}, {"city": "nice"}])]


def test_get_batch_names_the_missing_queries_unless_given_a_default() -> None:
    pipeline = DataPipeline([MemoryStore(), Source("s", ("paris",))])
    queries = [PARIS, {"city": "atlantis"}, {"city": "mu"}]
    with pytest.raises(NotFoundError) as error:
        pipeline.get_batch(Weather, queries)
    message = str(error.value)
    assert "atlantis" in message and "mu" in message and "Weather" in message
    assert "'paris'" not in message
    assert pipeline.get_batch(Weather, queries, default=None) == [Weather("paris", "s"), None, None]
    assert pipeline.get_batch(Weather, []) == []


# -- sessions -----------------------------------------------------------------------------


def test_session_sets_current_session_inside_the_block_only() -> None:
    pipeline = DataPipeline([Source("s")])
    assert current_session() is None
    with pipeline.session("nightly", {"run": 1}) as session_id:
        assert session_id and current_session() == session_id
        with pipeline.session("inner") as inner_id:
            assert current_session() == inner_id != session_id
        assert current_session() == session_id
    assert current_session() is None


def test_session_is_closed_even_when_the_block_raises() -> None:
    pipeline = DataPipeline([Source("s")])
    with pytest.raises(RuntimeError), pipeline.session("failing"):
        raise RuntimeError("boom")
    assert current_session() is None


# -- the hit path -------------------------------------------------------------------------


def test_the_plan_for_a_type_is_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = plan_module.plan_routes

    def counting(*args: Any, **options: Any) -> Any:
        calls.append(args[-1])
        return real(*args, **options)

    monkeypatch.setattr(plan_module, "plan_routes", counting)
    store, source = MemoryStore(), Source("s", ("paris", "lyon"))
    pipeline = DataPipeline([store, source])
    assert pipeline.routes(Weather) is pipeline.routes(Weather)
    for city in ("paris", "lyon", "paris", "nice"):
        try:
            pipeline.get(Weather, {"city": city})
        except NotFoundError:
            pass
    pipeline.get_batch(Weather, [PARIS], default=None)
    pipeline.get_many(Weather, {})
    assert calls == [Weather]


class _Recording(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@pytest.fixture
def debug_records() -> Iterator[list[logging.LogRecord]]:
    """Every log record emitted anywhere while the test runs, with DEBUG switched on."""
    root = logging.getLogger()
    handler = logging.StreamHandler()
    recording = _Recording()
    handler.addFilter(recording)
    handler.setLevel(logging.DEBUG)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        yield recording.records
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def _no_graph_search(*args: Any) -> Any:
    raise AssertionError("a hit searched the type graph")


def _no_deepcopy(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a hit deep-copied something")


@pytest.mark.parametrize("layout", ["first-tier", "second-tier", "converted"])
def test_a_hit_logs_nothing_copies_nothing_and_searches_no_graph(
    layout: str, monkeypatch: pytest.MonkeyPatch, debug_records: list[logging.LogRecord]
) -> None:
    if layout == "converted":
        source: DataSource = Source("raw", ("paris",), types={Payload})
        pipeline = DataPipeline([MemoryStore(), source], [PayloadToWeather()])
    elif layout == "second-tier":
        pipeline = DataPipeline([MemoryStore(types={Unrelated}), MemoryStore(), Source("s")])
    else:
        pipeline = DataPipeline([MemoryStore(), Source("s")])
    first = pipeline.get(Weather, PARIS)
    monkeypatch.setattr(TypeGraph, "cheapest", _no_graph_search)
    monkeypatch.setattr(copy, "deepcopy", _no_deepcopy)
    debug_records.clear()
    for _ in range(3):
        assert pipeline.get(Weather, PARIS) is first
    assert debug_records == []


def test_get_batch_never_hands_its_batch_to_a_1x_get_many() -> None:
    # A 1.x get_many has its own query format: without batch_get_many it is asked query by query.
    source = BatchSource({"oslo", "bergen"})
    source.batch_get_many = False  # type: ignore[misc]
    queries = [{"city": "oslo"}, {"city": "bergen"}]
    assert DataPipeline([source]).get_batch(Weather, queries) == [source.get(Weather, q) for q in queries]
    assert all(call[0] != "get_many" for call in source.calls)
