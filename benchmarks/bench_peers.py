"""Hits against the caches people would pick instead: dogpile.cache, cachetools, raw diskcache and Redis.

One run, every case side by side: each round times a burst of every case in
turn (so a shared machine's load hits all alike; within a case who goes first
rotates), and the table shows medians over the rounds with the ratio ours / peer
(below 1 is faster). Memory cases run at each ``--sizes`` (keys in use, each
burst walks them in a shuffled order, so a large working set pays its CPU-cache
misses; each cache holds its own values), plus a row for the hit at the largest
size over the hit at the smallest; the disk, Redis and miss cases run at the
smallest size, since their cost does not grow with it.

Cases (ours is always ``pipeline.get`` / ``get_batch`` through a DataPipeline):

* memory hit vs dogpile ``region.get`` (memory backend) and cachetools ``@cached``
  with a lock (both thread-safe, keys already made by the caller);
* memory ``get_batch`` of 100, per key, vs dogpile ``get_multi`` of the same keys;
* disk hit (default safe serializer) vs raw ``diskcache.Cache.get`` + ``pickle.loads``;
* Redis hit vs raw ``GET`` + ``pickle.loads`` and vs dogpile's Redis backend;
* Redis ``get_batch`` of 100 vs raw ``MGET`` + ``pickle.loads``, per key;
* a miss through memory + disk + Redis + a source with write-back to all three,
  vs the same by hand with cachetools, diskcache, redis-py and pickle;
* bytes per cached entry (tracemalloc) vs cachetools and dogpile.

Run: ``.venv/bin/python benchmarks/bench_peers.py [--sizes 1000,100000,1000000] [--rounds N]
[--readme README.md]``. ``--readme`` rewrites the table between the README's
``bench_peers`` markers and draws the chart it shows, ``docs/bench_peers.png``; the chart
also goes to ``benchmarks/bench_peers.png``.
Redis cases need the server at REDIS_URL (default redis://127.0.0.1:6379/0);
they use a unique key prefix and remove it afterwards.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import pickle
import random
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cachetools
import diskcache
import redis
from bench_tiers import redis_url
from dogpile.cache import make_region

from datapipelines import DataPipeline, NotFoundError, source
from datapipelines.sinks.disk import DiskStore
from datapipelines.sinks.memory import MemoryStore
from datapipelines.sinks.redis import RedisStore

CHART = Path(__file__).with_name("bench_peers.png")
README_CHART = Path("docs", "bench_peers.png")  # beside the README that --readme rewrites
BATCH = 100
BURST = 1_000  # operations per timed burst (a batch case: keys)
MARKERS = ("<!-- bench_peers table start -->", "<!-- bench_peers table end -->")


@dataclasses.dataclass(frozen=True)
class User:
    id: int
    name: str


def user(i: int) -> User:
    return User(i, f"user {i}")


@dataclasses.dataclass
class Case:
    """One row: ours and each peer as a burst function returning how many operations it did."""

    name: str
    ours: Callable[[], int]
    peers: dict[str, Callable[[], int]]
    goal: str = ""
    keys: int = 0  # keys in use, for the memory cases

    @property
    def tier(self) -> str:
        """memory, disk, Redis or miss: the first word of the name."""
        return self.name.split(" ", 1)[0].rstrip(",")


def cycling(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Successive slices of ``size`` items, wrapping around: each burst gets the next ones."""
    start = 0
    while True:
        if start + size > len(items):
            start = 0
        yield items[start : start + size]
        start += size


def burst_of(per_item: Callable[[Any], Any], items: list[Any], size: int = BURST) -> Callable[[], int]:
    slices = cycling(items, min(size, len(items)))

    def burst() -> int:
        chunk = next(slices)
        for item in chunk:
            per_item(item)
        return len(chunk)

    return burst


def batch_burst_of(per_batch: Callable[[list[Any]], Any], batches: list[list[Any]]) -> Callable[[], int]:
    slices = cycling(batches, max(1, min(BURST // BATCH, len(batches))))

    def burst() -> int:
        chunk = next(slices)
        for batch in chunk:
            per_batch(batch)
        return len(chunk) * BATCH

    return burst


def shuffled(count: int, seed: int) -> list[int]:
    ids = list(range(count))
    random.Random(seed).shuffle(ids)
    return ids


# -- memory ------------------------------------------------------------------------------------------


def memory_cases(size: int) -> list[Case]:
    """Each cache holds its own value objects, and every call starts from the same key string.

    Ours builds its query from it on every call, as a caller writes ``pipeline.get(User,
    {"key": k})``; the peers take the string as their key. Sharing the values (or reusing
    prepared query dicts) would let whichever case runs first warm the CPU caches for the
    others, which at 10^6 keys decides the result.
    """
    order = shuffled(size, size)
    store = MemoryStore(maxsize=size)
    store.store_many(User, [({"key": f"k{i}"}, user(i)) for i in range(size)])
    ours = DataPipeline([store])

    region = make_region().configure("dogpile.cache.memory")
    region.set_multi({f"k{i}": user(i) for i in range(size)})

    lock = threading.Lock()

    @cachetools.cached(cache=cachetools.LRUCache(maxsize=size), lock=lock)
    def load_user(key: str) -> User:
        return user(int(key[1:]))

    for i in range(size):
        load_user(f"k{i}")

    keys = [f"k{i}" for i in order]
    assert ours.get(User, {"key": keys[0]}) == region.get(keys[0]) == load_user(keys[0])
    key_batches = [keys[i : i + BATCH] for i in range(0, size - BATCH + 1, BATCH)]
    label = f"{size:,} keys"
    return [
        Case(
            f"memory hit, {label}",
            burst_of(lambda key: ours.get(User, {"key": key}), keys),
            {
                "dogpile region.get": burst_of(region.get, keys),
                "cachetools @cached+lock": burst_of(load_user, keys),
            },
            "faster than both",
            size,
        ),
        Case(
            f"memory batch of {BATCH}, per key, {label}",
            batch_burst_of(lambda batch: ours.get_batch(User, [{"key": key} for key in batch]), key_batches),
            {"dogpile get_multi": batch_burst_of(region.get_multi, key_batches)},
            "<= 3x",
            size,
        ),
    ]


def bytes_per_entry(count: int) -> dict[str, float]:
    """Bytes each cache keeps per entry (key, bookkeeping; not the value), by tracemalloc.

    Each cache is filled, then every entry is read once: what a cache in use holds.
    """
    values = [user(i) for i in range(count)]
    queries = [{"key": f"k{i}"} for i in range(count)]
    keys = [f"k{i}" for i in range(count)]
    kept: list[Any] = []

    def ours() -> None:
        store = MemoryStore(maxsize=count)
        pipeline = DataPipeline([store])
        for i in range(count):
            pipeline.put(User, values[i], query=queries[i])
        for query in queries:
            pipeline.get(User, query)
        kept.append(pipeline)

    def cachetools_cached() -> None:
        @cachetools.cached(cache=cachetools.LRUCache(maxsize=count), lock=threading.Lock())
        def load_user(key: str) -> User:
            return values[int(key[1:])]

        for _ in range(2):
            for key in keys:
                load_user(key)
        kept.append(load_user)

    def dogpile_region() -> None:
        region = make_region().configure("dogpile.cache.memory")
        for i in range(count):
            region.set(keys[i], values[i])
        for key in keys:
            region.get(key)
        kept.append(region)

    found = {}
    for name, fill in [("ours", ours), ("cachetools", cachetools_cached), ("dogpile", dogpile_region)]:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        fill()
        gc.collect()
        found[name] = (tracemalloc.get_traced_memory()[0] - before) / count
        tracemalloc.stop()
        kept.clear()
    return found


# -- disk and Redis --------------------------------------------------------------------------------


def disk_case(directory: str, size: int) -> Case:
    queries = [{"key": f"k{i}"} for i in range(size)]
    store = DiskStore(os.path.join(directory, "ours"))
    store.store_many(User, [(queries[i], user(i)) for i in range(size)])
    ours = DataPipeline([store])
    raw = diskcache.Cache(os.path.join(directory, "raw"))
    for i in range(size):
        raw.set(f"k{i}", pickle.dumps(user(i), protocol=pickle.HIGHEST_PROTOCOL))
    order = shuffled(size, 7)
    assert ours.get(User, queries[0]) == pickle.loads(raw.get("k0"))
    return Case(
        "disk hit",
        burst_of(lambda q: ours.get(User, q), [queries[i] for i in order], 200),
        {
            "diskcache get + pickle": burst_of(
                lambda k: pickle.loads(raw.get(k)), [f"k{i}" for i in order], 200
            )
        },
        "<= 1.2x",
    )


def redis_cases(url: str, prefix: str, size: int) -> list[Case]:
    queries = [{"key": f"k{i}"} for i in range(size)]
    store = RedisStore(url, namespace=f"{prefix}-ours")
    store.store_many(User, [(queries[i], user(i)) for i in range(size)])
    ours = DataPipeline([store])
    client = store.client  # the same socket settings, so only the layer on top differs
    raw_keys = [f"{prefix}-raw:k{i}" for i in range(size)]
    client.mset({raw_keys[i]: pickle.dumps(user(i), protocol=pickle.HIGHEST_PROTOCOL) for i in range(size)})
    region = make_region(key_mangler=lambda key: f"{prefix}-dogpile:{key}").configure(
        "dogpile.cache.redis", arguments={"url": url}
    )
    region.set_multi({f"k{i}": user(i) for i in range(size)})

    order = shuffled(size, 11)
    walk = [queries[i] for i in order]
    keys = [raw_keys[i] for i in order]
    assert ours.get(User, walk[0]) == pickle.loads(client.get(keys[0])) == region.get(f"k{order[0]}")
    batches = [walk[i : i + BATCH] for i in range(0, size - BATCH + 1, BATCH)]
    key_batches = [keys[i : i + BATCH] for i in range(0, size - BATCH + 1, BATCH)]

    def mget(batch: list[str]) -> list[Any]:
        return [pickle.loads(blob) for blob in client.mget(batch)]

    return [
        Case(
            "Redis hit",
            burst_of(lambda q: ours.get(User, q), walk, 100),
            {
                "GET + pickle.loads": burst_of(lambda k: pickle.loads(client.get(k)), keys, 100),
                "dogpile redis get": burst_of(region.get, [f"k{i}" for i in order], 100),
            },
            "<= 1.15x raw, ahead of dogpile",
        ),
        Case(
            f"Redis batch of {BATCH}, per key",
            batch_burst_of(lambda qs: ours.get_batch(User, qs), batches),
            {"MGET + pickle.loads": batch_burst_of(mget, key_batches)},
            "<= 1.5x",
        ),
    ]


@source(User)
def users(query: Any) -> User:
    """The remote every miss ends at: builds the user from the query."""
    if not query["key"].startswith("m"):
        raise NotFoundError(f"no user {query['key']}")
    return user(int(query["key"][1:]))


def miss_case(directory: str, url: str, prefix: str) -> Case:
    """Every call is a new key: three tiers miss, the source answers, all three are written."""
    ours = DataPipeline(
        [
            MemoryStore(maxsize=1_000_000),
            DiskStore(os.path.join(directory, "miss-ours")),
            RedisStore(url, namespace=f"{prefix}-miss-ours"),
            users,
        ]
    )
    memory: cachetools.LRUCache[str, User] = cachetools.LRUCache(maxsize=1_000_000)
    lock = threading.Lock()
    disk = diskcache.Cache(os.path.join(directory, "miss-raw"))
    client = redis.Redis.from_url(url)

    def by_hand(key: str) -> User:
        with lock:
            found = memory.get(key)
        if found is not None:
            return found
        blob = disk.get(key)
        if blob is None:
            blob = client.get(f"{prefix}-miss-raw:{key}")
        if blob is not None:
            return pickle.loads(blob)  # type: ignore[no-any-return]
        value = user(int(key[1:]))
        blob = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        client.set(f"{prefix}-miss-raw:{key}", blob)
        disk.set(key, blob)
        with lock:
            memory[key] = value
        return value

    ours_keys = (f"m{i}" for i in range(10**9))
    raw_keys = (f"m{i}" for i in range(10**9))

    def ours_burst() -> int:
        for _ in range(20):
            ours.get(User, {"key": next(ours_keys)})
        return 20

    def raw_burst() -> int:
        for _ in range(20):
            by_hand(next(raw_keys))
        return 20

    return Case("miss, write-back to 3 tiers", ours_burst, {"by hand, raw libraries": raw_burst}, "<= 1.3x")


def remove_prefix(url: str, prefix: str) -> None:
    with redis.Redis.from_url(url) as client:
        batch = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(batch), 500):
            client.unlink(*batch[start : start + 500])


# -- measuring and reporting ----------------------------------------------------------------------


def measure(cases: list[Case], rounds: int) -> dict[tuple[str, str], float]:
    """Median seconds per operation of every (case, who), rounds interleaved across all of them.

    Within a case, who goes first changes every round: the sides of a case walk the same key
    strings, and the first to touch them pays their CPU-cache misses.
    """
    groups = [
        [(case.name, who, fn) for who, fn in [("ours", case.ours), *case.peers.items()]] for case in cases
    ]
    for group in groups:
        for _, _, fn in group:
            fn()  # warm up: first calls fill caches and open connections
    samples: dict[tuple[str, str], list[float]] = {
        (name, who): [] for group in groups for name, who, _ in group
    }
    for round_ in range(rounds):
        for group in groups:
            turn = round_ % len(group)
            for name, who, fn in group[turn:] + group[:turn]:
                started = time.perf_counter()
                done = fn()
                samples[name, who].append((time.perf_counter() - started) / done)
    return {where: statistics.median(values) for where, values in samples.items()}


def table(cases: list[Case], medians: dict[tuple[str, str], float], memory: dict[str, float]) -> str:
    lines = [
        "| case | ours | peer | peer's | ours / peer | goal |",
        "|---|---|---|---|---|---|",
    ]
    for case in cases:
        ours = medians[case.name, "ours"]
        for index, (who, _) in enumerate(case.peers.items()):
            peer = medians[case.name, who]
            first = index == 0
            lines.append(
                f"| {case.name if first else ''} | {f'{ours * 1e6:.2f} µs' if first else ''} | {who} "
                f"| {peer * 1e6:.2f} µs | {ours / peer:.2f}x | {case.goal if first else ''} |"
            )
    hits = sorted((case for case in cases if case.name.startswith("memory hit")), key=lambda case: case.keys)
    for case in hits[1:]:
        # The cost of a hit must not grow with the working set (bounded only by the CPU caches).
        ours, fewest = medians[case.name, "ours"], medians[hits[0].name, "ours"]
        lines.append(
            f"| memory hit at {case.keys:,} / at {hits[0].keys:,} keys | {ours * 1e6:.2f} µs "
            f"| ours at {hits[0].keys:,} keys | {fewest * 1e6:.2f} µs | {ours / fewest:.2f}x | <= 1.5x |"
        )
    if memory:
        ours_bytes = memory["ours"]
        for index, peer in enumerate(("cachetools", "dogpile")):
            first = index == 0
            lines.append(
                f"| {'bytes per cached entry' if first else ''} | {f'{ours_bytes:.0f} B' if first else ''} "
                f"| {peer} | {memory[peer]:.0f} B | {ours_bytes / memory[peer]:.2f}x "
                f"| {'<= 2x cachetools' if first else ''} |"
            )
    return "\n".join(lines)


def chart(cases: list[Case], medians: dict[tuple[str, str], float], paths: list[Path]) -> None:
    """One panel per tier: ours (blue) and each peer (grey) per case, with the ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tiers = list(dict.fromkeys(case.tier for case in cases))
    panels = {
        tier: [(case, who) for case in cases if case.tier == tier for who in ["ours", *case.peers]]
        for tier in tiers
    }
    figure, axes = plt.subplots(
        len(tiers),
        1,
        figsize=(10, sum(0.3 * len(bars) + 0.9 for bars in panels.values())),
        gridspec_kw={"height_ratios": [len(bars) for bars in panels.values()]},
        squeeze=False,
    )
    for axis, tier in zip(axes[:, 0], tiers, strict=True):
        bars = panels[tier]
        micros = [medians[case.name, who] * 1e6 for case, who in bars]
        axis.barh(
            range(len(bars)), micros, color=["tab:blue" if who == "ours" else "tab:gray" for _, who in bars]
        )
        axis.set_yticks(
            range(len(bars)), [case.name if who == "ours" else who for case, who in bars], fontsize=7
        )
        axis.invert_yaxis()
        for position, ((case, who), value) in enumerate(zip(bars, micros, strict=True)):
            ratio = (
                ""
                if who == "ours"
                else f"  ours / this: {medians[case.name, 'ours'] / medians[case.name, who]:.2f}x"
            )
            axis.text(value, position, f" {value:.2f} µs{ratio}", va="center", fontsize=7)
        axis.set_xlim(0, max(micros) * 1.6)
        axis.set_title(f"{tier}: µs per operation (a batch: per key); blue: datapipelines", fontsize=9)
    figure.suptitle("datapipelines vs dogpile.cache, cachetools and the raw libraries", fontsize=10)
    figure.tight_layout()
    for path in paths:
        figure.savefig(path, dpi=110)
        print(f"chart: {path}")


def rewrite_readme(path: Path, text: str) -> None:
    readme = path.read_text(encoding="utf-8")
    start, end = MARKERS
    before, found, rest = readme.partition(start)
    if not found or end not in rest:
        raise SystemExit(f"bench_peers: error: {path} has no {start} ... {end} markers")
    path.write_text(before + start + "\n" + text + "\n" + end + rest.partition(end)[2], encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000", help="keys in use for the memory cases")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument("--memory-entries", type=int, default=100_000, help="entries for bytes per entry")
    parser.add_argument("--readme", type=Path, help="rewrite the table in this README")
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(","))
    prefix = f"bench-peers-{uuid.uuid4().hex[:8]}"
    url = redis_url()
    with tempfile.TemporaryDirectory() as directory:
        try:
            cases = [case for size in sizes for case in memory_cases(size)]
            cases.append(disk_case(directory, sizes[0]))
            if url is None:
                print("Redis: skipped, nothing answers at REDIS_URL / 127.0.0.1:6379")
            else:
                cases += [*redis_cases(url, prefix, sizes[0]), miss_case(directory, url, prefix)]
            medians = measure(cases, args.rounds)
        finally:
            if url is not None:
                remove_prefix(url, prefix)
    memory = bytes_per_entry(args.memory_entries) if args.memory_entries else {}
    text = table(cases, medians, memory)
    command = " ".join(["python", "benchmarks/bench_peers.py", *sys.argv[1:]])
    load = os.getloadavg()[0]
    text += (
        f"\n\nMedians of {args.rounds} interleaved rounds; ours / peer below 1 is faster. "
        f"Command: `{command}` (load average {load:.1f} when it ran)."
    )
    print(text)
    charts = [CHART]
    if args.readme is not None:
        rewrite_readme(args.readme, text)
        charts.append(args.readme.parent / README_CHART)
    chart(cases, medians, charts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
