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

``--instructions`` compares the client-cached hit with the memory hit by CPU
instructions instead, which a busy machine does not blur: it runs each case
under ``valgrind --tool=callgrind`` with two numbers of calls and divides the
difference in instructions by the difference in calls (so start-up and warm-up
cancel out).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable

from _timing import median_ns

from datapipelines import DataPipeline
from datapipelines.sinks.memory import MemoryStore
from datapipelines.sinks.redis import RedisStore
from datapipelines.store import Store

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


def filled(store: Store) -> DataPipeline:
    pipeline = DataPipeline([store])
    pipeline.put(Match, VALUE, query=QUERY)
    pipeline.put_many(Match, [VALUE] * BATCH, queries=BATCH_QUERIES)
    return pipeline


def wait_for_tracking(store: RedisStore, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while store.client_cache is None or not store.client_cache.tracking:
        if time.monotonic() > deadline:
            raise SystemExit(f"{store!r} did not start tracking within {timeout}s")
        time.sleep(0.01)


def redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def fresh_namespace() -> str:
    return f"bench-client-cache-{uuid.uuid4().hex[:8]}"


OPERATIONS: dict[str, tuple[Callable[[DataPipeline], object], int]] = {
    # operation -> (one call, keys per call)
    "hit": (lambda pipeline: pipeline.get(Match, QUERY), 1),
    "batch": (lambda pipeline: pipeline.get_batch(Match, BATCH_QUERIES), BATCH),
}


def run_calls(case: str, operation: str, calls: int) -> None:
    """``calls`` of ``operation`` on one warm pipeline (``memory`` or else the client cache's)."""
    store: RedisStore | MemoryStore
    if case == "memory":
        store = MemoryStore()
    else:
        store = RedisStore(redis_url(), namespace=fresh_namespace(), client_side=True)
        wait_for_tracking(store)
    call, keys = OPERATIONS[operation]
    try:
        pipeline = filled(store)
        time.sleep(0.5)  # Redis's messages about the writes above drop the copies read before them
        call(pipeline)
        cache = store.client_cache if isinstance(store, RedisStore) else None
        heard = 0 if cache is None else cache.invalidations
        for _ in range(calls):
            call(pipeline)
        if cache is not None:
            # Nothing dropped a copy while counting, and every key read had one: each call was a copy hit.
            assert (cache.invalidations, len(cache)) == (heard, keys)
    finally:
        if isinstance(store, RedisStore):
            store.clear()
            store.close()


def instructions_per_call(case: str, operation: str, few: int, many: int) -> float:
    counts = []
    for calls in (few, many):
        command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                   sys.executable, __file__, "--run", case, operation, str(calls)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / (many - few)


def instructions() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind on PATH (apt-get install valgrind)")
    print(f"{'instructions per key':<22}{'memory':>10}{'client cache':>14}{'ratio':>8}")
    for operation, (_, keys) in OPERATIONS.items():
        few, many = (200, 2_200) if keys == 1 else (5, 55)
        memory = instructions_per_call("memory", operation, few, many) / keys
        cached = instructions_per_call("client cache", operation, few, many) / keys
        print(f"{operation:<22}{memory:>10.0f}{cached:>14.0f}{cached / memory:>7.2f}x")
    print(f"\ncallgrind; command: {' '.join([sys.executable, *sys.argv])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="rounds of bursts (default 15)")
    parser.add_argument("--instructions", action="store_true", help="count instructions with callgrind")
    parser.add_argument("--run", nargs=3, metavar=("CASE", "OPERATION", "CALLS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        run_calls(args.run[0], args.run[1], int(args.run[2]))
        return
    if args.instructions:
        instructions()
        return
    url, namespace = redis_url(), fresh_namespace()
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
        hit, batch = OPERATIONS["hit"][0], OPERATIONS["batch"][0]
        hits = median_ns({name: functools.partial(hit, p) for name, p in pipelines.items()},
                         number=2_000, repeats=args.repeats)  # fmt: skip
        batches = median_ns({name: functools.partial(batch, p) for name, p in pipelines.items()},
                            number=50, repeats=args.repeats)  # fmt: skip
        # QUERY is one of the batch's: every key read has its copy, so the hits came from copies.
        assert tracked.client_cache is not None
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
