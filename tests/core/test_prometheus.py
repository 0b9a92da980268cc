"""The Prometheus collector, scraped over HTTP on a free loopback port: values equal stats()."""

from __future__ import annotations

import urllib.request
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client.parser import text_string_to_metric_families

from datapipelines import DataPipeline, NotFoundError
from datapipelines.prometheus import PipelineCollector, serve_metrics
from datapipelines.sinks import MemoryStore
from tests.support.metrics import Api, IngestingPipeline, Weather, expected_counters, scripted_run


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    """sample name -> {sorted labels: value}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    found: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def test_a_scrape_equals_stats_after_a_scripted_run() -> None:
    pipeline = DataPipeline([MemoryStore(), Api()], name="weather")
    scripted_run(pipeline)
    with serve_metrics(pipeline, port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        metrics = scrape(server.url)
    for name, labels, value in expected_counters(pipeline):
        assert metrics[f"datapipelines_{name.replace('.', '_')}_total"][labels] == value, name
    source = (("pipeline", "weather"), ("source", "api"))
    assert metrics["datapipelines_source_calls_total"][source] == 4
    assert metrics["datapipelines_source_duration_seconds_count"][source] == 4
    infinite = tuple(sorted({"pipeline": "weather", "source": "api", "le": "+Inf"}.items()))
    assert metrics["datapipelines_source_duration_seconds_bucket"][infinite] == 4
    tier = (("pipeline", "weather"), ("tier", "MemoryStore(maxsize=10000)"))
    assert metrics["datapipelines_tier_hits_total"][tier] == 202
    assert metrics["datapipelines_tier_breaker_open"][tier] == 0


def test_histograms_accumulate_across_scrapes_and_counters_follow_the_pipeline() -> None:
    pipeline = DataPipeline([Api()], name="p")
    with serve_metrics(pipeline, port=0) as server:
        pipeline.get(Weather, {"city": "Oslo"})
        first = scrape(server.url)
        for city in ("Bergen", "Tromsø"):
            pipeline.get(Weather, {"city": city})
        with pytest.raises(NotFoundError):
            pipeline.get(Weather, {"city": "Atlantis"})
        second = scrape(server.url)
    source = (("pipeline", "p"), ("source", "api"))
    assert first["datapipelines_source_duration_seconds_count"][source] == 1
    assert second["datapipelines_source_duration_seconds_count"][source] == 4
    assert second["datapipelines_source_calls_total"][source] == 4
    assert second["datapipelines_source_misses_total"][source] == 1
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for labels, value in second["datapipelines_source_duration_seconds_bucket"].items()
    )
    assert [value for _, value in buckets] == sorted(value for _, value in buckets)  # cumulative


def test_ingest_section_is_exported_with_consistent_labels() -> None:
    pipeline = IngestingPipeline([MemoryStore(), Api()], name="inbox")
    pipeline.ingest = {"listeners": {"incoming": {"received": 12, "in_flight": 3}}, "rescans": 1}
    collector = PipelineCollector(pipeline)
    families = {family.name: family for family in collector.collect()}
    files = {tuple(sorted(s.labels.items())): s.value for s in families["datapipelines_ingest_files"].samples}
    assert files == {
        (("outcome", "received"), ("pipeline", "inbox"), ("scope", "listeners.incoming")): 12,
        (("outcome", "rescans"), ("pipeline", "inbox"), ("scope", "")): 1,
    }
    gauges = [(s.labels["name"], s.value) for s in families["datapipelines_ingest_gauge"].samples]
    assert gauges == [("listeners.incoming.in_flight", 3.0)]


def test_two_servers_need_two_ports_and_a_closed_one_stops_answering() -> None:
    pipeline = DataPipeline([Api()])
    server = serve_metrics(pipeline, port=0)
    url = server.url
    assert "datapipelines_source_calls_total" in scrape(url)
    with pytest.raises(OSError):
        serve_metrics(pipeline, port=server.port)
    server.close()
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=2)


def test_collector_forgets_pipelines_that_are_gone() -> None:
    collector = PipelineCollector(DataPipeline([Api()], name="temporary"))
    import gc

    gc.collect()
    samples: list[Any] = [s for family in collector.collect() for s in family.samples]
    assert not any(s.labels.get("pipeline") == "temporary" for s in samples)
