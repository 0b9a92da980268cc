"""Function sources, sinks and transformers, mixed with 1.x classes; pipeline.cached."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import pytest

from datapipelines import (
    ConfigurationError,
    DataPipeline,
    DataSink,
    DataSource,
    DataTransformer,
    FunctionSource,
    NotFoundError,
    Policy,
    UnsupportedError,
    sink,
    source,
    transformer,
)
from datapipelines.sinks import MemoryStore


@dataclass(frozen=True)
class Raw:
    text: str


@dataclass(frozen=True)
class Weather:
    city: str
    celsius: float


@dataclass(frozen=True)
class Station:
    id: int


class Stations(DataSource):
    """A 1.x-style source."""

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any: ...

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any: ...

    @get.register(Station)
    def get_station(self, query: Any, context: Any = None) -> Station:
        return Station(query["id"])


class Ledger(DataSink):
    """A 1.x-style sink that keeps every Weather it is handed."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    @DataSink.dispatch
    def put(self, type: Any, item: Any, context: Any = None) -> None: ...

    @DataSink.dispatch
    def put_many(self, type: Any, items: Any, context: Any = None) -> None: ...

    @put.register(Weather)
    def put_weather(self, item: Weather, context: Any = None) -> None:
        self.items.append(item)


class Celsius(DataTransformer):
    """A 1.x-style transformer: Raw texts that are just a number."""

    @DataTransformer.dispatch
    def transform(self, target_type: Any, value: Any, context: Any = None) -> Any: ...

    @transform.register(Raw, float)
    def raw_to_float(self, value: Raw, context: Any = None) -> float:
        return float(value.text.split(":")[1])


def test_function_elements_mix_with_1x_classes_in_one_pipeline() -> None:
    fetched: list[dict[str, Any]] = []
    recorded: list[Raw] = []

    @source(Raw)
    def api(query: Any, context: Any = None) -> Raw:
        fetched.append(query)
        if query["city"] == "Atlantis":
            raise NotFoundError("no such city")
        return Raw(f"{query['city']}:3.5")

    @sink(Raw)
    def record(item: Raw) -> None:  # no context parameter: called without it
        recorded.append(item)

    @transformer(Raw, Weather, cost=1)
    def parse(raw: Raw, context: Any = None) -> Weather:
        assert context is not None and context["query"]["city"] in raw.text
        city, celsius = raw.text.split(":")
        return Weather(city, float(celsius))

    ledger, memory = Ledger(), MemoryStore()
    pipeline = DataPipeline([memory, ledger, record, Stations(), api], [parse, Celsius()])

    assert pipeline.get(Weather, {"city": "Oslo"}) == Weather("Oslo", 3.5)
    assert pipeline.get(Weather, {"city": "Oslo"}) == Weather("Oslo", 3.5)  # from memory
    assert len(fetched) == 1
    assert recorded == [Raw("Oslo:3.5")]  # the sink got the raw value, before parsing
    assert ledger.items == [Weather("Oslo", 3.5)]  # the 1.x sink got the parsed one
    assert pipeline.get(float, {"city": "Bergen"}) == 3.5  # through the 1.x transformer
    assert pipeline.get(Station, {"id": 7}) == Station(7)  # the 1.x source, beside the function one
    with pytest.raises(NotFoundError):
        pipeline.get(Weather, {"city": "Atlantis"})
    assert (
        pipeline.stats()["sources"][
            "test_function_elements_mix_with_1x_classes_in_one_pipeline.<locals>.api"
        ]["calls"]
        == 3
    )


def test_function_source_answers_get_many_and_stays_callable() -> None:
    @source(Weather)
    def weather(query: Any) -> Weather:
        return Weather(query["city"], 1.0)

    @weather.many
    def all_weather(query: Any, context: Any = None) -> list[Weather]:
        return [Weather(city, 1.0) for city in query["cities"]]

    @source.many(Station)
    def stations(query: Any) -> list[Station]:
        return [Station(i) for i in query["ids"]]

    assert isinstance(weather, FunctionSource) and weather.provides == {Weather}
    assert weather({"city": "Oslo"}) == Weather("Oslo", 1.0)  # still the function
    assert weather.__name__ == "weather"
    pipeline = DataPipeline(
        [MemoryStore(), weather, stations], query_from={Weather: lambda w: {"city": w.city}}
    )
    assert pipeline.get_many(Weather, {"cities": ["Oslo", "Bergen"]}) == [
        Weather("Oslo", 1.0),
        Weather("Bergen", 1.0),
    ]
    assert pipeline.get(Weather, {"city": "Bergen"}) == Weather("Bergen", 1.0)
    assert list(pipeline.get_many(Station, {"ids": [1, 2]}, streaming=True)) == [Station(1), Station(2)]
    with pytest.raises(UnsupportedError, match="no get for Station"):
        stations.get(Station, {"id": 1})
    with pytest.raises(UnsupportedError):
        weather.get(Station, {"id": 1})


def test_function_sink_put_many_and_types() -> None:
    batches: list[list[Any]] = []

    @sink.many(Weather, Station)
    def keep(items: list[Any], context: Any = None) -> None:
        batches.append(items)

    assert keep.accepts == {Weather, Station}
    pipeline = DataPipeline([keep])
    pipeline.put(Weather, Weather("Oslo", 1.0))
    pipeline.put_many(Station, [Station(1), Station(2)])
    assert batches == [[Weather("Oslo", 1.0)], [Station(1), Station(2)]]
    with pytest.raises(UnsupportedError):
        keep.put(Raw, Raw("x"))


def test_cheaper_function_transformer_wins() -> None:
    @transformer(Raw, Weather, cost=5)
    def slow(raw: Raw) -> Weather:
        return Weather("slow", 0.0)

    @transformer(Raw, Weather, cost=1)
    def fast(raw: Raw) -> Weather:
        return Weather("fast", 0.0)

    @source(Raw)
    def raw(query: Any) -> Raw:
        return Raw("x")

    assert DataPipeline([raw], [slow, fast]).get(Weather, {}) == Weather("fast", 0.0)
    assert fast.cost == 1 and fast.transforms == {Raw: {Weather}}
    with pytest.raises(UnsupportedError):
        fast.transform(Station, Raw("x"))


def test_decorators_used_wrongly_say_how() -> None:
    def fetch(query: Any) -> Any: ...

    async def fetch_async(query: Any) -> Any: ...

    with pytest.raises(ConfigurationError, match=r"@source\(Weather\)"):
        source(fetch)
    with pytest.raises(ConfigurationError, match="no async pipeline"):
        source(Weather)(fetch_async)
    with pytest.raises(ConfigurationError, match="decorates a function"):
        sink(Weather)(Weather)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"@sink\(Weather\)"):
        sink()


def test_cached_function_goes_through_tiers_stats_and_invalidate() -> None:
    calls: list[tuple[str, str]] = []
    memory = MemoryStore()
    pipeline = DataPipeline([memory], name="app")

    @pipeline.cached(Weather, query=lambda city, units="metric": {"city": city, "units": units})
    def weather(city: str, units: str = "metric") -> Weather:
        calls.append((city, units))
        return Weather(city, 3.5 if units == "metric" else 38.3)

    assert weather("Oslo") == Weather("Oslo", 3.5)
    assert weather("Oslo") == Weather("Oslo", 3.5)
    assert weather("Oslo", units="imperial") == Weather("Oslo", 38.3)
    assert calls == [("Oslo", "metric"), ("Oslo", "imperial")]
    assert pipeline.get(Weather, {"city": "Oslo", "units": "metric"}) == Weather("Oslo", 3.5)  # same entry
    stats = pipeline.stats()
    assert stats["tiers"]["MemoryStore(maxsize=10000)"]["hits"] == 2
    assert (
        stats["sources"]["test_cached_function_goes_through_tiers_stats_and_invalidate.<locals>.weather"][
            "calls"
        ]
        == 2
    )

    assert weather.invalidate("Oslo") == 1
    assert weather("Oslo") == Weather("Oslo", 3.5)
    assert calls[-1] == ("Oslo", "metric") and len(calls) == 3
    assert weather.__name__ == "weather"


def test_cached_default_query_is_the_arguments_by_name() -> None:
    pipeline = DataPipeline([MemoryStore()])
    calls = []

    @pipeline.cached(Station)
    def station(id: int, network: str = "met") -> Station:
        calls.append(id)
        return Station(id)

    assert station(3) == station(id=3) == station(3, "met") == Station(3)
    assert calls == [3]
    assert station.query_for(3) == {"id": 3, "network": "met"}
    # Asked through the pipeline directly, the query is the function's own arguments.
    assert pipeline.get(Station, {"id": 4, "network": "met"}) == Station(4)
    with pytest.raises(ConfigurationError, match="call the cached function itself"):
        pipeline.get(Station, {"station": 5})


def test_cached_function_calls_once_for_concurrent_identical_calls() -> None:
    pipeline = DataPipeline([MemoryStore()])
    calls, gate = [], threading.Barrier(20)

    @pipeline.cached(Weather, query=lambda city: {"city": city})
    def weather(city: str) -> Weather:
        calls.append(city)
        time.sleep(1.0)  # long enough for the other callers to arrive, even on a loaded machine
        return Weather(city, 1.0)

    results: list[Weather] = []

    def ask() -> None:
        gate.wait()
        results.append(weather("Oslo"))

    threads = [threading.Thread(target=ask) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [Weather("Oslo", 1.0)] * 20
    assert calls == ["Oslo"]
    name = "test_cached_function_calls_once_for_concurrent_identical_calls.<locals>.weather"
    assert pipeline.stats()["sources"][name]["joins"] >= 1


def test_cached_function_refreshes_in_the_background_with_its_arguments() -> None:
    now = [1000.0]
    memory = MemoryStore(clock=lambda: now[0])
    pipeline = DataPipeline([memory], policies={Weather: Policy(ttl=100, soft_ttl=10)})
    calls: list[str] = []
    refreshed = threading.Event()

    @pipeline.cached(Weather, query=lambda city: {"city": city.lower()})
    def weather(city: str) -> Weather:
        calls.append(city)
        if len(calls) > 1:
            refreshed.set()
        return Weather(city, float(len(calls)))

    assert weather("Oslo") == Weather("Oslo", 1.0)
    now[0] += 20  # past soft_ttl: served at once, refreshed once in the background
    assert weather("OSLO") == Weather("Oslo", 1.0)
    assert refreshed.wait(timeout=30)
    deadline = time.monotonic() + 30
    while memory.lookup(Weather, {"city": "oslo"}) != Weather("OSLO", 2.0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls == ["Oslo", "OSLO"]  # the refresh called the function with the hitting call's arguments
    assert weather("oslo") == Weather("OSLO", 2.0)


def test_cached_rejects_coroutine_functions_until_there_is_an_async_pipeline() -> None:
    pipeline = DataPipeline([MemoryStore()])

    async def weather(city: str) -> Weather: ...

    with pytest.raises(ConfigurationError, match="no async pipeline"):
        pipeline.cached(Weather)(weather)
