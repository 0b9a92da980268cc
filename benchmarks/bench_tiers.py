"""Hit latency of each built-in tier through a pipeline, beside the raw library underneath.

1. Memory: ``pipeline.get`` hit vs a raw ``cachetools.LRUCache`` lookup (goal <= 4x, under 1 µs).
2. Disk: hit vs raw ``diskcache.Cache.get`` plus the same decode (goal <= 1.2x).
3. Redis: hit vs raw redis-py ``GET`` plus the same decode (goal <= 1.15x).
4. Redis batch: ``get_batch`` of 100 vs one raw ``MGET`` of the same keys plus decode, per key (<= 1.5x).
5. Serializers: one entry read through each option side by side (the envelope
   included where a serializer has one), as a ratio to plain ``pickle.loads``:
   the JSON tag walk, msgspec JSON and MessagePack decoding into the dataclass,
   HMAC-signed pickle. "The same decode" above is the store's default serializer.

Raw and pipeline alternate (in bursts for memory, call by call otherwise) so a
shared machine's load hits both alike; medians. The raw Redis calls use the store's own
client, so both sides have the same socket settings. Also draws
benchmarks/bench_tiers.png. Run: .venv/bin/python benchmarks/bench_tiers.py [--runs N]
Redis cases need the server at REDIS_URL (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cachetools
import diskcache
import msgspec
import redis

from datapipelines import DataPipeline, key_for
from datapipelines.sinks.disk import DiskStore
from datapipelines.sinks.memory import MemoryStore
from datapipelines.sinks.redis import RedisStore
from datapipelines.sinks.serializers import Codec, JsonSerializer, MsgpackSerializer, SignedPickleSerializer

CHART = Path(__file__).with_name("bench_tiers.png")
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


@dataclasses.dataclass
class Case:
    name: str
    pipeline: Callable[[], Any]
    raw: Callable[[], Any]
    per_call: int  # operations per call (a batch counts each key)
    goal: float
    raw_label: str
    absolute_goal: float | None = None  # seconds per operation, when the goal has one


def per_operation(function: Callable[[], Any], calls: int, per_call: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / (calls * per_call)


def calibrate(function: Callable[[], Any], budget: float = 0.05) -> int:
    """How many calls fill about ``budget`` seconds."""
    calls = 1
    while True:
        started = time.perf_counter()
        for _ in range(calls):
            function()
        if time.perf_counter() - started >= budget / 4:
            return max(1, int(calls * budget / (time.perf_counter() - started)))
        calls *= 4


def measure(case: Case, runs: int) -> tuple[float, float]:
    """Median seconds per operation of (pipeline, raw), interleaved so load hits both alike.

    Sub-microsecond cases alternate in bursts of calls (a timer read per call
    would swamp them); slower ones alternate call by call, so a descheduled call
    is an outlier the median ignores rather than a slower burst.
    """
    assert case.pipeline() == case.raw(), f"{case.name}: the pipeline and the raw path disagree"
    calls = calibrate(case.raw)
    ours, raws = [], []
    if calls > 10_000:
        for _ in range(runs):
            raws.append(per_operation(case.raw, calls, case.per_call))
            ours.append(per_operation(case.pipeline, calls, case.per_call))
    else:
        for _ in range(runs * calls):
            raws.append(per_operation(case.raw, 1, case.per_call))
            ours.append(per_operation(case.pipeline, 1, case.per_call))
    return statistics.median(ours), statistics.median(raws)


def memory_cases() -> list[Case]:
    store = MemoryStore()
    pipeline = DataPipeline([store])
    pipeline.put(Match, VALUE, query=QUERY)
    cache: cachetools.LRUCache[Any, Any] = cachetools.LRUCache(10_000)
    key = key_for(Match, QUERY)
    cache[key] = VALUE
    typed = cachetools.keys.typedkey(**QUERY)
    cache[typed] = VALUE
    return [
        # The comparison: a lookup with the key already in hand.
        Case(
            "memory hit",
            lambda: pipeline.get(Match, QUERY),
            lambda: cache[key],
            1,
            4.0,
            "LRUCache[key]",
            absolute_goal=1e-6,
        ),
        # The same job done with cachetools alone: from the query to the value, types kept
        # apart (as cachetools' own @cached(typed=True) keys it). Informative, no goal.
        Case(
            "memory hit, by query",
            lambda: pipeline.get(Match, QUERY),
            lambda: cache[cachetools.keys.typedkey(**QUERY)],
            1,
            float("inf"),
            "LRU[typedkey(**q)]",
        ),
    ]


def disk_case(directory: str) -> Case:
    store = DiskStore(os.path.join(directory, "store"))
    serializer = store.serializer  # the default, so only our layer differs
    pipeline = DataPipeline([store])
    pipeline.put(Match, VALUE, query=QUERY)
    raw = diskcache.Cache(os.path.join(directory, "raw"))
    key = key_for(Match, QUERY)
    raw.set(key, serializer.dumps(VALUE, Match))
    return Case(
        "disk hit",
        lambda: pipeline.get(Match, QUERY),
        lambda: serializer.loads(raw.get(key), Match),
        1,
        1.2,
        "Cache.get + decode",
    )


def redis_cases(url: str, namespace: str) -> list[Case]:
    store = RedisStore(url, namespace=namespace)
    serializer = store.serializer
    pipeline = DataPipeline([store])
    pipeline.put(Match, VALUE, query=QUERY)
    pipeline.put_many(Match, [VALUE] * BATCH, queries=BATCH_QUERIES)
    client = store.client  # the same connection settings (socket timeouts), so only our layer differs
    raw_key = f"{namespace}:raw:{key_for(Match, QUERY)}"
    raw_keys = [f"{namespace}:raw:{key_for(Match, q)}" for q in BATCH_QUERIES]
    client.set(raw_key, serializer.dumps(VALUE, Match))
    client.mset({k: serializer.dumps(VALUE, Match) for k in raw_keys})
    return [
        Case(
            "Redis hit",
            lambda: pipeline.get(Match, QUERY),
            lambda: serializer.loads(client.get(raw_key), Match),
            1,
            1.15,
            "GET + decode",
        ),
        Case(
            f"Redis get_batch({BATCH})",
            lambda: pipeline.get_batch(Match, BATCH_QUERIES),
            lambda: [serializer.loads(b, Match) for b in client.mget(raw_keys)],
            BATCH,
            1.5,
            "MGET + decode",
        ),
    ]


def serializer_options() -> dict[str, Callable[[], Any]]:
    """Reading VALUE back through each serializer option; the first is the reference."""
    key = key_for(Match, QUERY)
    pickled = pickle.dumps(VALUE, protocol=pickle.HIGHEST_PROTOCOL)
    as_json, as_msgpack = msgspec.json.encode(VALUE), msgspec.msgpack.encode(VALUE)
    json_into, msgpack_into = msgspec.json.Decoder(Match).decode, msgspec.msgpack.Decoder(Match).decode
    options: dict[str, Callable[[], Any]] = {
        "pickle.loads (unsafe)": lambda: pickle.loads(pickled),
        "msgspec JSON into Match": lambda: json_into(as_json),
        "msgspec msgpack into Match": lambda: msgpack_into(as_msgpack),
    }
    for name, serializer in [
        ("entry: JSON tag walk", JsonSerializer()),
        ("entry: MessagePack (default)", MsgpackSerializer()),
        ("entry: signed pickle", SignedPickleSerializer("a secret")),
    ]:
        codec = Codec(serializer)
        entry = codec.encode(VALUE, Match, key, time.time(), None)
        options[name] = lambda codec=codec, entry=entry: codec.decode(entry, Match, key, 0.0)[0]
    return options


def compare_serializers(runs: int) -> None:
    """Median µs per read of each option, bursts interleaved, and the ratio to the first."""
    options = serializer_options()
    assert all(read() == VALUE for read in options.values())
    calls = calibrate(next(iter(options.values())), budget=0.01)
    samples: dict[str, list[float]] = {name: [] for name in options}
    for _ in range(runs * 4):
        for name, read in options.items():
            samples[name].append(per_operation(read, calls, 1))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    reference = next(iter(medians.values()))
    print(f"\n{'reading one Match':<30}{'median':>13}  vs pickle.loads")
    for name, seconds in medians.items():
        print(f"{name:<30}{micros(seconds):>13}  {seconds / reference:6.2f}x")


def redis_url() -> str | None:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5) as client:
            client.ping()
    except (redis.RedisError, OSError):
        return None
    return url


def micros(seconds: float) -> str:
    return f"{seconds * 1e6:9.2f} µs"


def report(rows: list[tuple[Case, float, float]], runs: int) -> None:
    print(f"{'case':<22}{'pipeline':>13}{'raw':>13}  {'raw is':<20}{'ratio':>7}{'goal':>8}  met")
    for case, ours, raw in rows:
        ratio = ours / raw
        met = ratio <= case.goal and (case.absolute_goal is None or ours <= case.absolute_goal)
        goal = "-" if case.goal == float("inf") else f"<={case.goal:g}x"
        goal += "" if case.absolute_goal is None else ", <1µs"
        print(
            f"{case.name:<22}{micros(ours):>13}{micros(raw):>13}  {case.raw_label:<20}{ratio:>6.2f}x"
            f"{goal:>8}  {'-' if goal == '-' else 'yes' if met else 'NO'}"
        )
    print(f"\nper operation (a batch: per key); medians of {runs} bursts (memory) or of every call (others)")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")


def chart(rows: list[tuple[Case, float, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [case.name for case, _, _ in rows]
    positions = range(len(rows))
    figure, axes = plt.subplots(figsize=(8, 4.5))
    axes.bar([p - 0.2 for p in positions], [raw * 1e6 for _, _, raw in rows], 0.4, label="raw library")
    axes.bar([p + 0.2 for p in positions], [ours * 1e6 for _, ours, _ in rows], 0.4, label="pipeline")
    axes.set_xticks(list(positions), names)
    axes.set_yscale("log")
    axes.set_ylabel("µs per hit (batch: per key), log scale")
    axes.set_title("datapipelines tier hits vs the raw library")
    axes.legend()
    figure.tight_layout()
    figure.savefig(CHART, dpi=120)
    print(f"chart: {CHART}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per case (default 15)")
    args = parser.parse_args()
    namespace = f"bench-tiers-{uuid.uuid4().hex[:8]}"
    url = redis_url()
    with tempfile.TemporaryDirectory() as directory:
        cases = [*memory_cases(), disk_case(directory)]
        if url is None:
            print("Redis: skipped, nothing answers at REDIS_URL / 127.0.0.1:6379")
        else:
            cases += redis_cases(url, namespace)
        try:
            rows = [(case, *measure(case, args.runs)) for case in cases]
        finally:
            if url is not None:
                RedisStore(url, namespace=namespace).clear()
    report(rows, args.runs)
    compare_serializers(args.runs)
    chart(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
