"""What the metrics bridges export, read from ``pipeline.stats()`` snapshots.

The OpenTelemetry bridge (:mod:`datapipelines.otel`) and the Prometheus collector
(:mod:`datapipelines.prometheus`) both turn a snapshot into the same
:class:`Sample` rows, so the two always agree with ``stats()`` and with each
other. Nothing here runs on a get: the counters are read when a reader collects.

- ``tier.<counter>`` for every tier (attributes ``pipeline``, ``tier``, and ``type``
  when the pipeline counts by type),
- ``source.<counter>`` for every source (``pipeline``, ``source``, ``type``),
- ``ingest.files`` for each integer in ``stats()["ingest"]`` (``outcome`` its
  key, ``scope`` the keys above it joined by dots), and ``ingest.gauge`` for the
  rest of that section's numbers (``name`` their dotted path),
- ``tier.duration`` / ``source.duration`` (seconds): the sampled latencies.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from .errors import type_name
from .pipeline import is_tier

TIER_COUNTERS = ("hits", "misses", "puts", "errors", "skips", "damaged")
SOURCE_COUNTERS = ("calls", "misses", "errors", "joins", "stale", "negative")
GROUPS = (("tiers", "tier", TIER_COUNTERS), ("sources", "source", SOURCE_COUNTERS))
# Keys of stats()["ingest"] that hold a level, not a count of files, even when an integer.
INGEST_GAUGE_KEYS = ("in_flight", "paused")
INGEST_GAUGE_SUFFIXES = ("_age", "_age_s", "_seconds", "_us")
# Latency histogram bounds in seconds: 1 µs (a memory hit) up to 10 s (a slow remote).
DURATION_BUCKETS = (
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

# The metrics every bridge exports, and what each counts.
GAUGES = ("tier.breaker_open", "ingest.gauge")
COUNTERS = tuple(f"{role}.{c}" for _, role, counters in GROUPS for c in counters) + ("ingest.files",)
DESCRIPTIONS = {
    "tier.hits": "lookups a tier answered",
    "tier.misses": "lookups a tier did not have",
    "tier.puts": "values written into a tier",
    "tier.errors": "failed tier lookups and writes",
    "tier.skips": "tier calls skipped while its circuit breaker was open",
    "tier.damaged": "entries a tier found failing their integrity check, served as misses",
    "tier.breaker_open": "1 while the tier's circuit breaker is open",
    "source.calls": "calls to a source",
    "source.misses": "source calls answered NotFoundError",
    "source.errors": "source calls that failed",
    "source.joins": "callers that shared another's single-flight call",
    "source.stale": "stale values served because the source failed",
    "source.negative": "misses answered from the negative cache",
    "ingest.files": "incoming files, by outcome",
    "ingest.gauge": "ingest levels (in flight, ages, pause)",
    "tier.duration": "sampled tier call latency",
    "source.duration": "sampled source call latency",
}


class Sample(NamedTuple):
    """One exported value: metric ``name`` (without the ``datapipelines.`` prefix)."""

    name: str
    value: float
    attributes: dict[str, str]


def counted(pipeline: Any) -> Iterator[tuple[str, Any, str | None]]:
    """``(role, ElementStats, type name or None)`` for every set of counters the pipeline keeps:
    one per element, and one per element and type when it counts by type."""
    roles = {}
    for element in pipeline.elements:
        roles[id(element)] = "tier" if is_tier(element) else "source"
        yield roles[id(element)], pipeline._stats[id(element)], None
    for (owner, type_), stats in list((pipeline._type_stats or {}).items()):
        yield roles[owner], stats, type_name(type_)


def counter_samples(pipeline: Any) -> Iterator[Sample]:
    """The counters of ``pipeline``, one Sample each, read from ``pipeline.stats()``.

    A pipeline built with ``stats_by_type=True`` gets one series per element and
    type (attribute ``type``), plus ``type=""`` for what it did outside any type.
    """
    report = pipeline.stats()
    by_type = pipeline._type_stats is not None
    for group, role, counters in GROUPS:
        for element, entry in report.get(group, {}).items():
            attributes = {"pipeline": pipeline.name, role: element}
            if "breaker" in entry:
                yield Sample(f"{role}.breaker_open", float(entry["breaker"] == "open"), attributes)
            if not by_type:
                for counter in counters:
                    yield Sample(f"{role}.{counter}", entry[counter], attributes)
    if by_type:
        for role, stats, type_ in counted(pipeline):
            entry = stats.snapshot()
            counters = TIER_COUNTERS if role == "tier" else SOURCE_COUNTERS
            if type_ is None and not any(entry[counter] for counter in counters):
                continue
            attributes = {"pipeline": pipeline.name, role: stats.name, "type": type_ or ""}
            for counter in counters:
                yield Sample(f"{role}.{counter}", entry[counter], attributes)
    ingest = report.get("ingest")
    if isinstance(ingest, Mapping):
        yield from _ingest_samples(pipeline.name, ingest, ())


def _is_gauge(key: str, value: Any) -> bool:
    return (
        not isinstance(value, int)
        or isinstance(value, bool)
        or key in INGEST_GAUGE_KEYS
        or (key.endswith(INGEST_GAUGE_SUFFIXES))
    )


def _ingest_samples(pipeline: str, section: Mapping[str, Any], path: tuple[str, ...]) -> Iterator[Sample]:
    for key, value in section.items():
        key = str(key)
        if isinstance(value, Mapping):
            yield from _ingest_samples(pipeline, value, (*path, key))
        elif isinstance(value, (int, float)):
            if _is_gauge(key, value):
                name = ".".join((*path, key))
                yield Sample("ingest.gauge", float(value), {"pipeline": pipeline, "name": name})
            else:
                attributes = {"pipeline": pipeline, "outcome": key}
                if path:
                    attributes["scope"] = ".".join(path)
                yield Sample("ingest.files", value, attributes)


class LatencyDrain:
    """Hands out each element's latency samples once: those recorded since the last drain.

    Pipelines are held weakly; the window of each element keeps its last 2,048
    samples, so a reader collecting less often than that many calls sees only
    the most recent ones.
    """

    def __init__(self) -> None:
        self._marks: weakref.WeakKeyDictionary[Any, dict[int, int]] = weakref.WeakKeyDictionary()

    def drain(self, pipeline: Any) -> Iterator[tuple[str, dict[str, str], list[float]]]:
        """``(metric name, attributes, new samples in seconds)`` per set of counters with new samples."""
        marks = self._marks.setdefault(pipeline, {})
        for role, stats, type_ in counted(pipeline):
            mark, samples = stats.latencies_since(marks.get(id(stats), 0))
            marks[id(stats)] = mark
            if samples:
                attributes = {"pipeline": pipeline.name, role: stats.name}
                if type_ is not None:
                    attributes["type"] = type_
                yield f"{role}.duration", attributes, samples
