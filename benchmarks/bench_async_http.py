"""What AsyncHttpSource buys against a slow server: concurrency without threads.

100 distinct queries against a local server that takes 50 ms per answer, fetched
with ``asyncio.gather`` through one AsyncHttpSource, and one after the other
through a blocking HttpSource (what a sequential sync caller does). Both go
through the same HttpRules; rounds interleave, medians of the wall times.
Goal (issue 16): async >= 5x faster than sequential sync.

Run: ``.venv/bin/python benchmarks/bench_async_http.py [--rounds N] [--queries N] [--delay S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from datapipelines import AsyncHttpSource, HttpSource, RawResponse
from datapipelines.testing import LocalServer, Reply


def queries(count: int, round_: int) -> list[dict[str, object]]:
    # Distinct per round too, so no round is answered from anything a former one left behind.
    return [{"path": "/slow", "params": {"n": n, "round": round_}} for n in range(count)]


def sequential_sync(url: str, batch: list[dict[str, object]]) -> float:
    with HttpSource(url) as source:
        started = time.perf_counter()
        for query in batch:
            source.get(RawResponse, query)
        return time.perf_counter() - started


def gathered_async(url: str, batch: list[dict[str, object]]) -> float:
    async def run() -> float:
        async with AsyncHttpSource(url) as source:
            started = time.perf_counter()
            answers = await asyncio.gather(*(source.get(RawResponse, query) for query in batch))
            elapsed = time.perf_counter() - started
        assert all(answer.status_code == 200 for answer in answers)
        return elapsed

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.05)
    args = parser.parse_args()
    with LocalServer({"/slow": lambda hit: Reply(200, {"n": hit.params["n"]}, delay=args.delay)}) as server:
        sync_times, async_times = [], []
        for round_ in range(args.rounds):
            batch = queries(args.queries, round_)
            sync_times.append(sequential_sync(server.url, batch))
            async_times.append(gathered_async(server.url, batch))
    sync_s, async_s = statistics.median(sync_times), statistics.median(async_times)
    delay_ms = args.delay * 1000
    print(f"{args.queries} distinct queries, server delay {delay_ms:.0f} ms, {args.rounds} rounds (medians)")
    print(f"  HttpSource, sequential        {sync_s * 1000:8.0f} ms")
    print(f"  AsyncHttpSource, gather       {async_s * 1000:8.0f} ms")
    ratio = sync_s / async_s
    print(f"  async is {ratio:.1f}x faster (goal >= 5x: {'met' if ratio >= 5 else 'NOT met'})")


if __name__ == "__main__":
    main()
