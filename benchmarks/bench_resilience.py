"""What resilience costs and what it saves.

1. The memory hit path of a type with a Policy (ttl, soft_ttl) against the same
   type without one, and of a pipeline exported by the OpenTelemetry bridge
   (metrics and traces, when the SDK is installed) against the same pipeline
   without it, beside a raw cachetools lookup of a precomputed key; interleaved
   repeats, medians. Goals: policies on at most 1.1x policies off; the bridge
   at most 1.02x.
2. A stampede: 1,000 threads released at once over 10 cold keys, through the
   pipeline (single-flight) and through a bare cachetools cache in front of the
   same source (no coalescing): source calls and wall time, medians of runs.

Run: ``.venv/bin/python benchmarks/bench_resilience.py [--repeats N] [--runs N] [--hit-only]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from _timing import median_ns
from cachetools import LRUCache

from datapipelines import DataPipeline, DataSource, key_for
from datapipelines.policy import Policy
from datapipelines.sinks import MemoryStore

SOURCE_DELAY = 0.02  # seconds per source call: a fast remote API


@dataclass(frozen=True)
class Reading:
    id: int
    value: str


class SlowSource(DataSource):
    """A remote stand-in: each call takes SOURCE_DELAY and is counted."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    @property
    def provides(self) -> Any:
        return {Reading}

    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        with self._lock:
            self.calls += 1
        time.sleep(SOURCE_DELAY)
        return Reading(query["id"], "fresh")

    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        raise NotImplementedError


def hit_path(repeats: int) -> list[tuple[str, float]]:
    queries = [{"id": n} for n in range(100)]
    plain = DataPipeline([MemoryStore(), SlowSource()])
    guarded = DataPipeline([MemoryStore(), SlowSource()], policies={Reading: Policy(ttl=3600, soft_ttl=600)})
    raw: LRUCache[str, Reading] = LRUCache(10_000)
    keys = [key_for(Reading, q) for q in queries]
    exported = instrumented()
    for query, key in zip(queries, keys, strict=True):
        for pipeline in (plain, guarded, exported):
            if pipeline is not None:
                pipeline.get(Reading, query)
        raw[key] = Reading(query["id"], "fresh")

    def loop(get: Any, items: list[Any]) -> Any:
        def run() -> None:
            for item in items:
                get(Reading, item)

        return run

    def raw_loop() -> None:
        for key in keys:
            raw[key]

    cases = {"policies off": loop(plain.get, queries), "policies on": loop(guarded.get, queries)}
    if exported is not None:
        cases["OTel bridge"] = loop(exported.get, queries)
    per_loop = median_ns({**cases, "raw": raw_loop}, number=200, repeats=repeats)
    return [(name, ns / len(queries)) for name, ns in per_loop.items()]


def instrumented() -> DataPipeline | None:
    """A pipeline like the plain one, exported by the OpenTelemetry bridge; None without the SDK."""
    try:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return None
    from datapipelines.otel import instrument

    pipeline = DataPipeline([MemoryStore(), SlowSource()], name="bench")
    meter_provider = MeterProvider([InMemoryMetricReader()])
    instrument(pipeline, meter_provider=meter_provider, tracer_provider=TracerProvider())
    return pipeline


def stampede(get: Any, source: SlowSource, requests: int = 1000, keys: int = 10) -> tuple[int, float]:
    """``requests`` threads released at once over ``keys`` cold keys: (source calls, wall seconds)."""
    gate = threading.Barrier(requests + 1)

    def ask(n: int) -> None:
        gate.wait()
        get(Reading, {"id": n % keys})

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(requests)]
    for thread in threads:
        thread.start()
    gate.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return source.calls, time.perf_counter() - started


def single_flight() -> tuple[Any, SlowSource]:
    source = SlowSource()
    return DataPipeline([MemoryStore(), source]).get, source


def bare_cache() -> tuple[Any, SlowSource]:
    """cachetools in front of the source, the usual hand-written way: no coalescing."""
    source, cache, lock = SlowSource(), LRUCache(10_000), threading.Lock()

    def get(type: Any, query: Any) -> Any:
        key = key_for(type, query)
        with lock:
            value = cache.get(key)
        if value is None:
            value = source.get(type, query)
            with lock:
                cache[key] = value
        return value

    return get, source


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats of the hit path")
    parser.add_argument("--runs", type=int, default=5, help="stampede runs per contender")
    parser.add_argument("--hit-only", action="store_true", help="measure the hit path only, no stampede")
    options = parser.parse_args()

    print(f"$ {sys.executable} {' '.join(sys.argv)}")
    rows = hit_path(options.repeats)
    off = dict(rows)["policies off"]
    print(f"\nmemory hit path, 100 warm keys, median of {options.repeats} interleaved repeats")
    print(f"{'case':<16}{'ns/get':>10}{'x off':>8}")
    for name, ns in rows:
        print(f"{name:<16}{ns:>10.0f}{ns / off:>8.2f}")
    ratio = dict(rows)["policies on"] / off
    print(f"goal: policies on <= 1.10x off -> {ratio:.2f}x {'met' if ratio <= 1.10 else 'NOT met'}")
    if "OTel bridge" in dict(rows):
        bridge = dict(rows)["OTel bridge"] / off
        print(f"goal: OTel bridge <= 1.02x off -> {bridge:.3f}x {'met' if bridge <= 1.02 else 'NOT met'}")
    else:
        print("OTel bridge: skipped (pip install opentelemetry-sdk to measure it)")
    if options.hit_only:
        return 0

    print(
        f"\nstampede: 1000 threads at once over 10 cold keys, source {SOURCE_DELAY * 1000:.0f} ms/call, "
        f"median of {options.runs} runs"
    )
    print(f"{'contender':<30}{'source calls':>14}{'wall ms':>10}")
    contenders = {
        "pipeline (single-flight)": single_flight,
        "cachetools, no coalescing": bare_cache,
    }
    for name, make in contenders.items():
        outcomes = [stampede(*make()) for _ in range(options.runs)]
        calls = statistics.median(calls for calls, _ in outcomes)
        wall = statistics.median(seconds for _, seconds in outcomes)
        print(f"{name:<30}{calls:>14.0f}{wall * 1000:>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
