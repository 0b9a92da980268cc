"""What callers see while Redis fails: failed gets and latency, 4 threads for 10 s per scenario.

The pipeline is memory (16 entries, so most gets reach Redis) -> RedisStore
(socket timeouts 0.25 s) -> a source that takes 1 ms, with a RedisLock on the
same server and breakers that open after 3 failures for 1 s. Scenarios:

- ``healthy``: a private redis-server throughout (the reference);
- ``killed``: the same, SIGKILLed after 30 % of the run and restarted at 60 %;
- ``silent``: a server that accepts connections and never answers.

Each prints gets, failed gets (any exception reaching the caller), p50 / p99 /
max latency in ms, and the Redis tier's errors and skips, plus the p99 ratio
against ``healthy``. Goals: no failed get in any scenario; in ``silent``, no
get pays more than one socket timeout per Redis user (store and lock: the
slowest get about 0.5 s, plus scheduling on a busy machine).

Needs ``redis-server`` on PATH. Run:
``.venv/bin/python benchmarks/bench_faults.py [--seconds 10] [--threads 4]``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from datapipelines import DataPipeline, DataSource, NotFoundError
from datapipelines.breaker import CircuitBreaker
from datapipelines.flight import RedisLock
from datapipelines.redis.testing import RedisServer, SilentRedis
from datapipelines.sinks import MemoryStore
from datapipelines.sinks.redis import RedisStore

TIMEOUT = 0.25
KEYS = 400


@dataclass(frozen=True)
class Reading:
    id: int
    value: str


class Origin(DataSource):
    """A fast remote stand-in: 1 ms per call."""

    provides = {Reading}

    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        time.sleep(0.001)
        return Reading(query["id"], "v1")

    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        raise NotFoundError()


def run(url: str, seconds: float, threads: int, events: list[tuple[float, Any]]) -> dict[str, Any]:
    """``threads`` callers doing gets for ``seconds``; ``events`` are (fraction of the run, action)."""
    store = RedisStore(url, namespace="bench-faults", socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT)
    lock = RedisLock(url=url, namespace="bench-faults:lock", socket_timeout=TIMEOUT, wait_timeout=1.0)
    pipeline = DataPipeline(
        [MemoryStore(maxsize=16), store, Origin()],
        process_lock=lock,
        breaker=lambda: CircuitBreaker(failures=3, cooldown=1.0),
    )
    latencies: list[list[float]] = [[] for _ in range(threads)]
    failed = [0] * threads
    start = time.monotonic()
    stop = start + seconds

    def caller(index: int) -> None:
        n, mine = index, latencies[index]
        while time.monotonic() < stop:
            began = time.perf_counter()
            try:
                pipeline.get(Reading, {"id": n % KEYS})
            except Exception:
                failed[index] += 1
            mine.append(time.perf_counter() - began)
            n += threads

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for fraction, action in events:
        time.sleep(max(0.0, start + fraction * seconds - time.monotonic()))
        action()
    for worker in workers:
        worker.join()
    tier = pipeline.stats()["tiers"][repr(store)]
    store.close()
    ordered = sorted(value for mine in latencies for value in mine)

    def ms(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * (len(ordered) - 1)))] * 1000

    return {
        "gets": len(ordered), "failed": sum(failed), "p50_ms": ms(0.5), "p99_ms": ms(0.99),
        "max_ms": ordered[-1] * 1000, "errors": tier["errors"], "skips": tier["skips"],
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each scenario")
    parser.add_argument("--threads", type=int, default=4)
    options = parser.parse_args()
    # Every failing call is logged as a warning; the table says what matters here.
    logging.getLogger("datapipelines").setLevel(logging.ERROR)
    binary = shutil.which("redis-server")
    if binary is None:
        print("bench_faults skipped: it needs redis-server on PATH (apt-get install redis-server)")
        return 0  # so that `make bench` runs the others
    results: dict[str, dict[str, Any]] = {}
    server = RedisServer(binary)
    server.start()
    try:
        results["healthy"] = run(server.url, options.seconds, options.threads, [])
        results["killed"] = run(
            server.url, options.seconds, options.threads, [(0.3, server.kill), (0.6, server.start)]
        )
    finally:
        server.kill()
    silent = SilentRedis()
    try:
        results["silent"] = run(silent.url, options.seconds, options.threads, [])
    finally:
        silent.close()

    print(f"$ {' '.join(sys.argv)}  ({options.threads} threads, {options.seconds:g} s per scenario)")
    print(f"{'scenario':<9} {'gets':>8} {'failed':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'errors':>7} {'skips':>7} {'p99 x healthy':>14}")  # fmt: skip
    reference = results["healthy"]["p99_ms"]
    for name, r in results.items():
        ratio = r["p99_ms"] / reference
        print(f"{name:<9} {r['gets']:>8} {r['failed']:>7} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['max_ms']:>8.1f} {r['errors']:>7} {r['skips']:>7} {ratio:>14.1f}")  # fmt: skip
    worst = 2 * TIMEOUT * 1000
    print(f"goals: 0 failed gets everywhere; silent max about {worst:.0f} ms (one timeout per Redis user)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
