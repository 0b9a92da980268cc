"""The OpenTelemetry bridge: exported values equal stats(), spans on the miss path only."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from dataclasses import dataclass

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from datapipelines import ConfigurationError, DataPipeline, DataSink, DataSource, NotFoundError
from datapipelines.errors import DamagedEntryError
from datapipelines.otel import instrument
from datapipelines.sinks import MemoryStore
from tests.support.metrics import Api, IngestingPipeline, Weather, expected_counters, scripted_run


def exported(reader: InMemoryMetricReader) -> dict[str, dict[tuple, Any]]:
    """metric name -> {sorted attributes: data point}."""
    found: dict[str, dict[tuple, Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            assert scope.scope.name == "datapipelines"
            for metric in scope.metrics:
                points = found.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    points[tuple(sorted(point.attributes.items()))] = point
    return found


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def providers(reader: InMemoryMetricReader, spans: InMemorySpanExporter) -> dict[str, Any]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    return {"meter_provider": MeterProvider(metric_readers=[reader]), "tracer_provider": tracer_provider}


def test_exported_counters_equal_stats_after_a_scripted_run(
    providers: dict[str, Any], reader: InMemoryMetricReader
) -> None:
    pipeline = DataPipeline([MemoryStore(), Api()], name="weather")
    instrument(pipeline, **providers)
    scripted_run(pipeline)
    metrics = exported(reader)
    for name, labels, value in expected_counters(pipeline):
        assert metrics[f"datapipelines.{name}"][labels].value == value, name
    tier = (("pipeline", "weather"), ("tier", "MemoryStore(maxsize=10000)"))
    assert metrics["datapipelines.tier.hits"][tier].value == 202  # 2 Oslo, 200 Bergen
    assert metrics["datapipelines.tier.breaker_open"][tier].value == 0
    source = (("pipeline", "weather"), ("source", "api"))
    assert metrics["datapipelines.source.calls"][source].value == 4
    assert metrics["datapipelines.source.errors"][source].value == 1


def test_duration_histograms_count_every_sampled_latency_once(
    providers: dict[str, Any], reader: InMemoryMetricReader
) -> None:
    pipeline = DataPipeline([MemoryStore(), Api()], name="weather")
    instrument(pipeline, **providers)
    scripted_run(pipeline)
    source = (("pipeline", "weather"), ("source", "api"))
    first = exported(reader)["datapipelines.source.duration"][source]
    assert first.count == 4  # every source call is timed
    assert first.sum > 0 and first.max < 1.0
    tier_points = exported(reader)["datapipelines.tier.duration"]
    memory = pipeline._stats[id(pipeline.elements[0])]
    assert sum(p.count for p in tier_points.values()) == memory.sampled  # cumulative, nothing twice
    pipeline.get(Weather, {"city": "Tromsø"})
    assert exported(reader)["datapipelines.source.duration"][source].count == 5


def test_several_pipelines_are_told_apart_by_name(
    providers: dict[str, Any], reader: InMemoryMetricReader
) -> None:
    first, second = DataPipeline([MemoryStore(), Api()], name="a"), DataPipeline([Api()], name="b")
    instrument(first, second, **providers)
    first.get(Weather, {"city": "Oslo"})
    for city in ("Oslo", "Bergen", "Oslo"):
        second.get(Weather, {"city": city})
    calls = exported(reader)["datapipelines.source.calls"]
    assert calls[(("pipeline", "a"), ("source", "api"))].value == 1
    assert calls[(("pipeline", "b"), ("source", "api"))].value == 3


def test_ingest_counters_are_exported_when_present(
    providers: dict[str, Any], reader: InMemoryMetricReader
) -> None:
    pipeline = IngestingPipeline([MemoryStore(), Api()], name="inbox")
    pipeline.ingest = {
        "listeners": {"incoming": {"received": 12, "claimed": 11, "in_flight": 3, "paused": False}},
        "steps": {"resize": {"processed": 9, "failed": 2, "p50_us": 1500.0}},
        "rescans": 1,
    }
    instrument(pipeline, **providers)
    metrics = exported(reader)
    files = {dict(key).get("scope", ""): {} for key in metrics["datapipelines.ingest.files"]}
    for key, point in metrics["datapipelines.ingest.files"].items():
        attributes = dict(key)
        assert attributes["pipeline"] == "inbox"
        files[attributes.get("scope", "")][attributes["outcome"]] = point.value
    assert files == {
        "listeners.incoming": {"received": 12, "claimed": 11},
        "steps.resize": {"processed": 9, "failed": 2},
        "": {"rescans": 1},
    }
    gauges = {dict(k)["name"]: p.value for k, p in metrics["datapipelines.ingest.gauge"].items()}
    assert gauges == {
        "listeners.incoming.in_flight": 3,
        "listeners.incoming.paused": 0,
        "steps.resize.p50_us": 1500,
    }

    pipeline.ingest["listeners"]["incoming"]["received"] = 15
    again = exported(reader)["datapipelines.ingest.files"]
    key = (("outcome", "received"), ("pipeline", "inbox"), ("scope", "listeners.incoming"))
    assert again[key].value == 15


def test_a_plain_pipeline_exports_no_ingest_metrics(
    providers: dict[str, Any], reader: InMemoryMetricReader
) -> None:
    pipeline = DataPipeline([MemoryStore(), Api()])
    instrument(pipeline, **providers)
    pipeline.get(Weather, {"city": "Oslo"})
    metrics = exported(reader)
    assert not metrics.get("datapipelines.ingest.files")
    assert metrics["datapipelines.source.calls"][(("pipeline", "default"), ("source", "api"))].value == 1


def tree(spans: InMemorySpanExporter) -> list[tuple[str, str | None]]:
    """(span name, parent span name) in the order the spans started."""
    finished = spans.get_finished_spans()
    names = {s.context.span_id: s.name for s in finished}
    ordered = sorted(finished, key=lambda s: (s.start_time, s.parent is not None))  # parents first on ties
    return [(s.name, names.get(s.parent.span_id) if s.parent else None) for s in ordered]


def test_a_miss_is_traced_from_get_through_lookup_fetch_and_write_back(
    providers: dict[str, Any], spans: InMemorySpanExporter
) -> None:
    pipeline = DataPipeline([MemoryStore(), Api()], name="weather")
    instrument(pipeline, **providers)
    pipeline.get(Weather, {"city": "Oslo"})  # first ever get: planned, then the slow path
    assert tree(spans) == [
        ("datapipelines.get", None),
        ("datapipelines.lookup", "datapipelines.get"),
        ("datapipelines.fetch", "datapipelines.get"),
        ("datapipelines.write_back", "datapipelines.get"),
    ]
    root = next(s for s in spans.get_finished_spans() if s.name == "datapipelines.get")
    assert root.attributes["datapipelines.pipeline"] == "weather"
    assert root.attributes["datapipelines.type"] == "Weather"
    assert root.attributes["datapipelines.answered_by"] == "api"
    lookup = next(s for s in spans.get_finished_spans() if s.name == "datapipelines.lookup")
    assert lookup.attributes["datapipelines.outcome"] == "miss"
    assert root.start_time <= lookup.start_time <= lookup.end_time <= root.end_time

    spans.clear()
    pipeline.get(Weather, {"city": "Bergen"})  # a miss handed over by the fast path
    assert [name for name, _ in tree(spans)] == [
        "datapipelines.get",
        "datapipelines.fetch",
        "datapipelines.write_back",
    ]
    root = next(s for s in spans.get_finished_spans() if s.name == "datapipelines.get")
    assert [e.name for e in root.events] == ["datapipelines.lookup"]


def test_hits_make_no_spans_and_ask_no_tracer(providers: dict[str, Any], spans: InMemorySpanExporter) -> None:
    pipeline = DataPipeline([MemoryStore(), Api()])
    instrument(pipeline, **providers)
    pipeline.get(Weather, {"city": "Oslo"})
    spans.clear()

    class NoTracer:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"a hit used the tracer: {name}")

    pipeline._tracer.tracer = NoTracer()
    for _ in range(500):  # the sampled hits (one in 64) take the slow path too
        assert pipeline.get(Weather, {"city": "Oslo"}) == Weather("Oslo", 3.5)
    assert spans.get_finished_spans() == ()


def test_failures_and_not_found_are_told_apart_on_spans(
    providers: dict[str, Any], spans: InMemorySpanExporter
) -> None:
    pipeline = DataPipeline([MemoryStore(), Api()])
    instrument(pipeline, **providers)
    with pytest.raises(NotFoundError):
        pipeline.get(Weather, {"city": "Atlantis"})
    with pytest.raises(RuntimeError):
        pipeline.get(Weather, {"city": "Mordor"})
    fetches = [s for s in spans.get_finished_spans() if s.name == "datapipelines.fetch"]
    assert fetches[0].attributes["datapipelines.outcome"] == "not_found"
    assert fetches[0].status.is_ok
    assert not fetches[1].status.is_ok and "the API is down" in fetches[1].status.description
    assert fetches[1].events[0].name == "exception"


def test_removed_pipelines_are_neither_traced_nor_exported(
    providers: dict[str, Any], reader: InMemoryMetricReader, spans: InMemorySpanExporter
) -> None:
    pipeline = DataPipeline([MemoryStore(), Api()], name="gone")
    bridge = instrument(pipeline, **providers)
    bridge.remove(pipeline)
    pipeline.get(Weather, {"city": "Oslo"})
    assert spans.get_finished_spans() == ()
    assert not exported(reader).get("datapipelines.source.calls")


def test_httpx_spans_nest_under_the_fetch_span(
    providers: dict[str, Any], spans: InMemorySpanExporter
) -> None:
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.httpx")
    from datapipelines.http import HttpSource
    from datapipelines.testing import LocalServer
    from datapipelines.transformers import DataclassTransformer, RawTransformer

    instrumentor = instrumentation.HTTPXClientInstrumentor()
    instrumentor.instrument(tracer_provider=providers["tracer_provider"])
    try:
        with LocalServer({"/weather": lambda hit: {"city": hit.params["city"], "celsius": 3.5}}) as server:
            source = HttpSource(server.url)
            converters = [RawTransformer(), DataclassTransformer(Weather)]
            pipeline = DataPipeline([MemoryStore(), source], converters, name="remote")
            instrument(pipeline, **providers)
            query = {"path": "/weather", "params": {"city": "Oslo"}}
            assert pipeline.get(Weather, query) == Weather("Oslo", 3.5)
            source.close()
    finally:
        instrumentor.uninstrument()
    finished = spans.get_finished_spans()
    fetch = next(s for s in finished if s.name == "datapipelines.fetch")
    (http,) = [s for s in finished if not s.name.startswith("datapipelines.")]
    assert http.parent is not None and http.parent.span_id == fetch.context.span_id
    assert http.context.trace_id == fetch.context.trace_id


def test_counting_by_type_is_opt_in_and_adds_a_type_attribute(
    providers: dict[str, Any], reader: InMemoryMetricReader
) -> None:
    @dataclass(frozen=True)
    class Forecast:
        city: str

    class Both(Api):
        @property
        def provides(self) -> Any:
            return {Weather, Forecast}

        def get(self, type: Any, query: Any, context: Any = None) -> Any:
            return Forecast(query["city"]) if type is Forecast else super().get(type, query, context)

    def script(pipeline: DataPipeline) -> None:
        scripted_run(pipeline)
        for city in ("Oslo", "Oslo", "Bergen"):
            pipeline.get(Forecast, {"city": city})

    typed, plain = (
        DataPipeline([MemoryStore(), Both()], name="typed", stats_by_type=True),
        DataPipeline([MemoryStore(), Both()]),
    )
    with pytest.raises(ConfigurationError, match="stats_by_type=True"):
        plain.stats_by_type()
    instrument(typed, plain, **providers)
    script(typed)
    script(plain)

    def counters(report: dict[str, Any]) -> dict[str, Any]:
        return {g: {n: {k: v for k, v in e.items() if not k.endswith("_us")} for n, e in report[g].items()}
                for g in ("tiers", "sources")}  # fmt: skip

    assert counters(typed.stats()) == counters(plain.stats())  # the totals do not change
    by_type = typed.stats_by_type()
    memory = "MemoryStore(maxsize=10000)"
    assert by_type["tiers"][memory]["Weather"]["hits"] == 202
    assert (
        by_type["tiers"][memory][
            "test_counting_by_type_is_opt_in_and_adds_a_type_attribute.<locals>.Forecast"
        ]["hits"]
        == 1
    )
    assert by_type["sources"]["api"]["Weather"]["calls"] == 4

    metrics = exported(reader)
    hits = {dict(k).get("type"): p.value for k, p in metrics["datapipelines.tier.hits"].items()
            if dict(k)["pipeline"] == "typed"}  # fmt: skip
    assert hits == {
        "Weather": 202,
        "test_counting_by_type_is_opt_in_and_adds_a_type_attribute.<locals>.Forecast": 1,
    }
    untyped = [dict(k) for k in metrics["datapipelines.tier.hits"] if dict(k)["pipeline"] == "default"]
    assert untyped == [{"pipeline": "default", "tier": memory}]
    durations = metrics["datapipelines.source.duration"]
    assert durations[(("pipeline", "typed"), ("source", "api"), ("type", "Weather"))].count == 4

    typed.reset_stats()
    assert typed.stats()["sources"]["api"]["calls"] == 0
    assert typed.stats_by_type()["sources"]["api"]["Weather"]["calls"] == 0


class FailingCache(DataSource, DataSink):
    """A cache tier whose lookups raise ``lookup_error`` and whose writes raise ``write_error``."""

    def __init__(self, name: str, lookup_error: Exception, write_error: Exception | None = None) -> None:
        self.name, self.lookup_error, self.write_error = name, lookup_error, write_error

    def __repr__(self) -> str:
        return self.name

    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        raise self.lookup_error

    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        raise self.lookup_error

    def put(self, type: Any, item: Any, context: Any = None) -> None:
        if self.write_error is not None:
            raise self.write_error

    def put_many(self, type: Any, items: Any, context: Any = None) -> None:
        self.put(type, items, context)


def test_a_failing_tier_shows_as_errors_skips_and_an_open_breaker(
    providers: dict[str, Any], reader: InMemoryMetricReader
) -> None:
    down = ConnectionError("cache is down")
    pipeline = DataPipeline([FailingCache("down", down, down), Api()], name="faulty")
    instrument(pipeline, **providers)
    for _ in range(6):
        assert pipeline.get(Weather, {"city": "Oslo"}) == Weather("Oslo", 3.5)
    metrics = exported(reader)
    tier = (("pipeline", "faulty"), ("tier", "down"))
    entry = pipeline.stats()["tiers"]["down"]
    assert entry["breaker"] == "open"
    assert metrics["datapipelines.tier.breaker_open"][tier].value == 1
    assert metrics["datapipelines.tier.errors"][tier].value == entry["errors"] > 0
    assert metrics["datapipelines.tier.skips"][tier].value == entry["skips"] > 0


def test_damaged_entries_are_exported(providers: dict[str, Any], reader: InMemoryMetricReader) -> None:
    damaged = DamagedEntryError("signature does not match")
    pipeline = DataPipeline([FailingCache("tampered", damaged), Api()], name="tampered")
    instrument(pipeline, **providers)
    for _ in range(3):
        assert pipeline.get(Weather, {"city": "Oslo"}) == Weather("Oslo", 3.5)
    tier = (("pipeline", "tampered"), ("tier", "tampered"))
    entry = pipeline.stats()["tiers"]["tampered"]
    assert exported(reader)["datapipelines.tier.damaged"][tier].value == entry["damaged"] == 3
