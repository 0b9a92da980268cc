"""The OpenTelemetry bridge (``pip install "datapipelines[otel]"``).

::

    from datapipelines.otel import instrument

    bridge = instrument(pipeline)          # the global meter and tracer providers
    bridge.add(other_pipeline)             # more pipelines on the same instruments

Metrics (meter ``datapipelines``) are observable instruments whose callbacks read
``pipeline.stats()`` when a reader collects, so a get does no more work than
without the bridge: ``datapipelines.tier.hits|misses|puts|errors|skips`` and
``datapipelines.source.calls|misses|errors|joins|stale|negative`` (counters, with
attributes ``pipeline`` and ``tier`` or ``source``), ``datapipelines.tier.breaker_open``
(a gauge), ``datapipelines.ingest.files`` (``outcome``, ``scope``) and
``datapipelines.ingest.gauge`` when the pipeline reports an ``ingest`` section,
and the histograms ``datapipelines.tier.duration`` / ``datapipelines.source.duration``
(seconds) fed with the latencies ``stats()`` samples. See :mod:`datapipelines.metrics`.

Spans cover the miss path only: ``datapipelines.get`` opens once the first tier
has not answered (a hit makes no span and looks up no tracer), with a
``datapipelines.lookup`` child per tier asked, a ``datapipelines.fetch`` child per
source call (the current span while the source runs, so httpx's own
instrumentation nests under it) and ``datapipelines.write_back``.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .extras import reraise_naming_extra

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.trace import Status, StatusCode
except ImportError as error:  # pragma: no cover - exercised in a venv without the extra
    reraise_naming_extra("datapipelines.otel", error)

from .errors import NotFoundError, type_name
from .metrics import COUNTERS, DESCRIPTIONS, DURATION_BUCKETS, GAUGES, LatencyDrain, Sample, counter_samples
from .store import MISSING


class OpenTelemetryBridge:
    """Exports the counters of any number of pipelines through one meter, and traces their misses.

    ``meter_provider`` / ``tracer_provider`` default to the global ones;
    ``traces=False`` exports metrics only. Pipelines are held weakly.
    """

    def __init__(
        self, meter_provider: Any = None, tracer_provider: Any = None, *, traces: bool = True
    ) -> None:
        from . import __version__

        self._pipelines: weakref.WeakSet[Any] = weakref.WeakSet()
        self._drain = LatencyDrain()
        self._samples: dict[str, list[Sample]] = {}
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("datapipelines", __version__)
        tracer = trace.get_tracer("datapipelines", __version__, tracer_provider)
        self._tracing = _Tracing(tracer) if traces else None
        self._durations = {
            name: meter.create_histogram(
                f"datapipelines.{name}", unit="s", description=DESCRIPTIONS[name],
                explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
            )
            for name in ("tier.duration", "source.duration")
        }  # fmt: skip
        for index, name in enumerate(COUNTERS + GAUGES):
            # The first callback of a collection takes the snapshots; the others read them.
            callbacks = [self._collect, self._observer(name)] if index == 0 else [self._observer(name)]
            create = meter.create_observable_gauge if name in GAUGES else meter.create_observable_counter
            create(f"datapipelines.{name}", callbacks=callbacks, unit="1", description=DESCRIPTIONS[name])

    def add(self, pipeline: Any) -> OpenTelemetryBridge:
        """Export ``pipeline`` too (and trace its misses, unless ``traces=False``)."""
        self._pipelines.add(pipeline)
        pipeline._tracer = self._tracing
        return self

    def remove(self, pipeline: Any) -> None:
        """Stop exporting and tracing ``pipeline``."""
        self._pipelines.discard(pipeline)
        if pipeline._tracer is self._tracing:
            pipeline._tracer = None

    def _collect(self, options: CallbackOptions) -> Iterable[Observation]:
        samples: dict[str, list[Sample]] = {}
        for pipeline in list(self._pipelines):
            for sample in counter_samples(pipeline):
                samples.setdefault(sample.name, []).append(sample)
            # Recorded during the collection, so this collection already exports them.
            for name, attributes, seconds in self._drain.drain(pipeline):
                histogram = self._durations[name]
                for value in seconds:
                    histogram.record(value, attributes)
        self._samples = samples
        return ()

    def _observer(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterator[Observation]:
            for sample in self._samples.get(name, ()):
                yield Observation(sample.value, sample.attributes)

        return observe


def instrument(*pipelines: Any, meter_provider: Any = None, tracer_provider: Any = None,
               traces: bool = True) -> OpenTelemetryBridge:  # fmt: skip
    """A new :class:`OpenTelemetryBridge` exporting ``pipelines``; one per meter provider."""
    bridge = OpenTelemetryBridge(meter_provider, tracer_provider, traces=traces)
    for pipeline in pipelines:
        bridge.add(pipeline)
    return bridge


def _outcome(found: Any) -> str:
    if found is MISSING:
        return "miss"
    return "unavailable" if found is None else "hit"


class _Tracing:
    """Installed as ``pipeline._tracer``: one :class:`_Trace` per get that reaches the slow path."""

    def __init__(self, tracer: Any) -> None:
        self.tracer = tracer

    def resolve(
        self, pipeline: Any, request: Any, start: int, only_cached: bool, walk: Callable[..., Any]
    ) -> Any:
        trace_ = request.trace = _Trace(self.tracer, pipeline.name, request.type)
        if start:
            # The fast path already missed in the first tier: this is a miss.
            trace_.open()
            trace_.root.add_event("datapipelines.lookup", _tier(request.routes[0], "miss"))
        try:
            result = walk(request, start, only_cached)
        except BaseException as error:
            trace_.close(error, None)
            raise
        trace_.close(None, result)
        return result


def _tier(route: Any, outcome: str | None = None) -> dict[str, str]:
    attributes = {"datapipelines.tier": route.source_name}
    if outcome is not None:
        attributes["datapipelines.outcome"] = outcome
    return attributes


def _failed(span: Any, error: BaseException) -> None:
    """A NotFoundError is an answer ("not here"); anything else marks the span as failed."""
    if isinstance(error, NotFoundError):
        span.set_attribute("datapipelines.outcome", "not_found")
    else:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


class _Trace:
    """The spans of one get. Tier lookups made before anything missed are only timed:
    they become spans when the get turns out to be a miss, and cost a clock reading on a hit."""

    __slots__ = ("tracer", "pipeline", "type", "last", "pending", "root", "token", "ask", "deliver")

    def __init__(self, tracer: Any, pipeline: str, type: Any) -> None:
        self.tracer, self.pipeline, self.type = tracer, pipeline, type
        # When the get began, then when the last untraced lookup ended: where the next one starts.
        self.last = time.time_ns()
        self.pending: list[tuple[Any, int, int, str]] = []
        self.root: Any = None
        self.token: Any = None
        # The pipeline's own tier lookup and write-back, handed over by lookup() and write_back().
        self.ask: Any = None
        self.deliver: Any = None

    def open(self) -> None:
        if self.root is not None:
            return
        start_span = self.tracer.start_span
        begun = self.pending[0][1] if self.pending else self.last
        attributes = {"datapipelines.pipeline": self.pipeline, "datapipelines.type": type_name(self.type)}
        self.root = start_span("datapipelines.get", start_time=begun, attributes=attributes)
        self.token = otel_context.attach(trace.set_span_in_context(self.root))
        for route, started, ended, outcome in self.pending:
            span = start_span("datapipelines.lookup", start_time=started, attributes=_tier(route, outcome))
            span.end(end_time=ended)

    def close(self, error: BaseException | None, result: Any) -> None:
        if self.root is None:
            return  # a hit: no spans
        if error is not None:
            _failed(self.root, error)
        else:
            self.root.set_attribute("datapipelines.answered_by", result.source)
            self.root.set_attribute("datapipelines.stale", result.stale)
        self.root.end()
        otel_context.detach(self.token)

    def lookup(self, ask: Callable[..., Any]) -> Callable[..., Any]:
        """``ask`` (the pipeline's tier lookup), timed, and a span once the get is a miss."""
        self.ask = ask
        return self._lookup

    def _lookup(self, route: Any, type: Any, query: Any) -> Any:
        if self.root is None:
            found = self.ask(route, type, query)
            started, self.last = self.last, time.time_ns()
            self.pending.append((route, started, self.last, _outcome(found)))
            if found is MISSING or found is None:
                self.open()
            return found
        with self.tracer.start_as_current_span("datapipelines.lookup", attributes=_tier(route)) as span:
            found = self.ask(route, type, query)
            span.set_attribute("datapipelines.outcome", _outcome(found))
        return found

    def fetch(self, route: Any) -> Callable[..., Any]:
        """``route.source.get`` under a current ``datapipelines.fetch`` span."""

        def traced(*args: Any) -> Any:
            self.open()
            attributes = {"datapipelines.source": route.source_name}
            with self.tracer.start_as_current_span(
                "datapipelines.fetch",
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    return route.source.get(*args)
                except BaseException as error:
                    _failed(span, error)
                    raise

        return traced

    def write_back(self, deliver: Callable[..., Any]) -> Callable[..., Any]:
        """``deliver`` (write-back and conversion) under a ``datapipelines.write_back`` span."""
        self.deliver = deliver
        return self._write_back

    def _write_back(self, route: Any, value: Any, context: Any, *rest: Any) -> Any:
        if not (route.before or route.after):
            return self.deliver(route, value, context, *rest)
        self.open()
        sinks = len(route.before) + len(route.after)
        attributes = {"datapipelines.answered_by": route.source_name, "datapipelines.sinks": sinks}
        with self.tracer.start_as_current_span("datapipelines.write_back", attributes=attributes):
            return self.deliver(route, value, context, *rest)
