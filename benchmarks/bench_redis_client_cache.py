"""What the Redis client-side cache buys: a Redis hit with and without it, beside the memory hit.

Three pipelines over the same value, each with one tier: ``RedisStore()``,
``RedisStore(client_side=True)`` and ``MemoryStore()``. Their ``pipeline.get``
hits are timed in interleaved bursts (every case once per round, so a shared
machine's load hits all alike); medians. Printed as ns per hit and as ratios:
the plain Redis hit over the client-cached one (the round trip and the decode
saved), and the client-cached hit over the memory hit (the goal: about 1x).
Also the batch path, ``get_batch`` of 100 keys, per key.

Run: ``.venv/bin/python benchmarks/bench_redis_client_cache.py [--repeats N]``;
needs the Redis at REDIS_URL (default redis://127.0.0.1:6379/0), under a namespace
of its own that it removes afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
import uuid

from _timing import median_ns

from datapipelines import DataPipeline
from datapipelines.sinks.memory import MemoryStore
from datapipelines.sinks.redis import RedisStore

BATCH = 100


@dataclasses.dataclass(frozen=True)
class Match:
    id: int
    region: str
    players: tuple[str, ...]
    duration: float


QUERY = {"id": 42, "region": "EUW"}
VALUE = Match(42, "EUW", tuple(f"player{i}" for i in range(10)), 1834.5)
BATCH_QUERIES = [{"id": i, "region": "EUW"} for i in range(BATCH)]


def filled(store: object) -> DataPipeline:
    pipeline = DataPipeline([store])
    pipeline.put(Match, VALUE, query=QUERY)
    pipeline.put_many(Match, [VALUE] * BATCH, queries=BATCH_QUERIES)
    return pipeline


def wait_for_tracking(store: RedisStore, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not store.client_cache.tracking:
        if time.monotonic() > deadline:
            raise SystemExit(f"{store!r} did not start tracking within {timeout}s")
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="rounds of bursts (default 15)")
    args = parser.parse_args()
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    namespace = f"bench-client-cache-{uuid.uuid4().hex[:8]}"
    plain = RedisStore(url, namespace=namespace)
    tracked = RedisStore(url, namespace=namespace, client_side=True)
    try:
        wait_for_tracking(tracked)
        pipelines = {
            "Redis": filled(plain), "Redis, client cache": filled(tracked), "memory": filled(MemoryStore()),
        }  # fmt: skip
        for pipeline in pipelines.values():  # the values are equal, and the client cache holds its copies
            assert pipeline.get(Match, QUERY) == VALUE
            assert pipeline.get_batch(Match, BATCH_QUERIES) == [VALUE] * BATCH
        hits = median_ns(
            {name: (lambda p=p: p.get(Match, QUERY)) for name, p in pipelines.items()},
            number=2_000, repeats=args.repeats,
        )  # fmt: skip
        batches = median_ns(
            {name: (lambda p=p: p.get_batch(Match, BATCH_QUERIES)) for name, p in pipelines.items()},
            number=50, repeats=args.repeats,
        )  # fmt: skip
        # QUERY is one of the batch's: every key read has its copy, so the hits came from copies.
        assert len(tracked.client_cache) == BATCH, "the client cache must hold a copy of every key read"
    finally:
        plain.clear()
        plain.close()
        tracked.close()
    print(f"{'pipeline.get hit':<22}{'ns':>10}   |  {'get_batch(100), per key':<24}{'ns':>8}")
    for name in pipelines:
        print(f"{name:<22}{hits[name]:>10.0f}   |  {name:<24}{batches[name] / BATCH:>8.0f}")
    print()
    for label, figures in (("hit", hits), ("batch", batches)):
        saved = figures["Redis"] / figures["Redis, client cache"]
        versus_memory = figures["Redis, client cache"] / figures["memory"]
        print(f"{label:<6} Redis / Redis with client cache: {saved:7.1f}x   "
              f"client cache / memory: {versus_memory:5.2f}x")  # fmt: skip
    print(f"\nmedians of {args.repeats} interleaved rounds; command: {' '.join([sys.executable, *sys.argv])}")


if __name__ == "__main__":
    main()
