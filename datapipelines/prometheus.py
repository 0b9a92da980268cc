"""The Prometheus collector (``pip install "datapipelines[prometheus]"``).

::

    from datapipelines.prometheus import serve_metrics

    server = serve_metrics(pipeline, port=9109)    # http://127.0.0.1:9109/metrics
    ...
    server.close()

or register :class:`PipelineCollector` in a registry of your own. Each scrape
reads ``pipeline.stats()``: ``datapipelines_tier_hits_total{pipeline,tier}`` and
the other counters of :mod:`datapipelines.metrics` (dots become underscores,
counters end in ``_total``), the gauges, and the histograms
``datapipelines_tier_duration_seconds`` / ``datapipelines_source_duration_seconds``
accumulated from the sampled latencies.
"""

from __future__ import annotations

import bisect
import threading
import weakref
from collections.abc import Iterator
from typing import Any

from .extras import reraise_naming_extra

try:
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
    from prometheus_client.registry import Collector
except ImportError as error:  # pragma: no cover - exercised in a venv without the extra
    reraise_naming_extra("datapipelines.prometheus", error)

from .metrics import COUNTERS, DESCRIPTIONS, DURATION_BUCKETS, GAUGES, LatencyDrain, Sample, counter_samples

_BOUNDS = [f"{bound:g}" for bound in DURATION_BUCKETS] + ["+Inf"]


def _prometheus_name(name: str) -> str:
    return "datapipelines_" + name.replace(".", "_")


class _Histogram:
    """Cumulative bucket counts and sum of one element's drained latency samples."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(DURATION_BUCKETS) + 1)
        self.total = 0.0

    def add(self, samples: list[float]) -> None:
        for seconds in samples:
            self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
            self.total += seconds

    def buckets(self) -> list[tuple[str, int]]:
        running, cumulative = 0, []
        for bound, count in zip(_BOUNDS, self.counts, strict=True):
            running += count
            cumulative.append((bound, running))
        return cumulative


class PipelineCollector(Collector):
    """A prometheus_client collector over the ``stats()`` of any number of pipelines (held weakly)."""

    def __init__(self, *pipelines: Any) -> None:
        self._pipelines: weakref.WeakSet[Any] = weakref.WeakSet(pipelines)
        self._drain = LatencyDrain()
        self._histograms: dict[tuple[str, tuple[tuple[str, str], ...]], _Histogram] = {}
        self._lock = threading.Lock()  # two scrapes at once must not drain the same samples twice

    def add(self, pipeline: Any) -> None:
        self._pipelines.add(pipeline)

    def remove(self, pipeline: Any) -> None:
        self._pipelines.discard(pipeline)

    def collect(self) -> Iterator[Any]:
        samples: dict[str, list[Sample]] = {}
        with self._lock:
            pipelines = list(self._pipelines)
            for pipeline in pipelines:
                for sample in counter_samples(pipeline):
                    samples.setdefault(sample.name, []).append(sample)
                for name, attributes, seconds in self._drain.drain(pipeline):
                    key = (name, tuple(sorted(attributes.items())))
                    self._histograms.setdefault(key, _Histogram()).add(seconds)
            histograms = [
                (name, dict(labels), histogram.buckets(), histogram.total)
                for (name, labels), histogram in self._histograms.items()
            ]
        for name in COUNTERS + GAUGES:
            rows = samples.get(name, [])
            labels = sorted({label for row in rows for label in row.attributes})
            family_type = GaugeMetricFamily if name in GAUGES else CounterMetricFamily
            family = family_type(_prometheus_name(name), DESCRIPTIONS[name], labels=labels)
            for row in rows:
                family.add_metric([row.attributes.get(label, "") for label in labels], row.value)
            yield family
        for name in ("tier.duration", "source.duration"):
            entries = [h for h in histograms if h[0] == name]
            keys = sorted({label for entry in entries for label in entry[1]})
            histogram_family = HistogramMetricFamily(
                _prometheus_name(name) + "_seconds", DESCRIPTIONS[name], labels=keys
            )
            for _, attributes, buckets, total in entries:
                histogram_family.add_metric([attributes.get(k, "") for k in keys], buckets, sum_value=total)
            yield histogram_family


class MetricsServer:
    """An HTTP server answering ``GET /metrics`` with the collector's text format; ``close()`` stops it."""

    def __init__(self, collector: PipelineCollector, port: int, addr: str) -> None:
        self.collector = collector
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        self._server, self._thread = start_http_server(port, addr, registry=self.registry)
        self.addr, self.port = addr, self._server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def serve_metrics(*pipelines: Any, port: int = 9109, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve the metrics of ``pipelines`` (this process's own) at ``http://addr:port/metrics``.

    Runs in a daemon thread; ``port=0`` picks a free port (see ``server.port``).
    Listens on loopback unless ``addr`` says otherwise.
    """
    return MetricsServer(PipelineCollector(*pipelines), port, addr)
