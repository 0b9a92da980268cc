"""Audit recorder throughput, and the cost it adds to a remote miss.

1. Recorded responses per second for 1 KB and 100 KB payloads, synchronous and
   write-behind (the final flush included; also without the age bound,
   ``max_delay=None``, to show what the durability bound costs), beside the floor of the libraries
   underneath (the same file write plus one committed SQLite insert in WAL mode).
2. A miss through MemoryStore -> source that takes 1 ms, without a recorder, with a
   synchronous AuditRecorder and with a write-behind one in between: the ratios are
   what recording costs (goal: under 1.1x). Every answer has its own bytes, so every
   recorded miss writes a new blob, as with a real API.

Recorders start in steady state: their 256 blob folders already exist.

Medians of several interleaved runs. Run: .venv/bin/python benchmarks/bench_audit.py [--runs N]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from datapipelines import DataPipeline
from datapipelines.remote import RawResponse, RemoteSource, request_for, response_for
from datapipelines.sinks.audit import BLOBS, AuditRecorder
from datapipelines.sinks.memory import MemoryStore
from datapipelines.transformers import JSON, RawTransformer


def payload(size: int, n: int) -> bytes:
    # Distinct bytes per response, so every record writes a new blob (no dedup shortcut).
    head = f'{{"n": {n}, "pad": "'.encode()
    return head + b"x" * (size - len(head) - 2) + b'"}'


def responses(size: int, count: int, run: int) -> list[RawResponse]:
    return [
        response_for(
            request_for({"path": "/item", "params": {"n": n, "run": run}}),
            payload=payload(size, n + run * count),
            status_code=200,
            content_type="application/json",
        )
        for n in range(count)
    ]


def steady_recorder(directory: str, **options: Any) -> AuditRecorder:
    """A recorder whose 256 blob folders exist, as in any directory that has seen a few thousand blobs."""
    for prefix in range(256):
        os.makedirs(os.path.join(directory, BLOBS, f"{prefix:02x}"))
    return AuditRecorder(directory, **options)


def recorder_rate(size: int, count: int, run: int, **options: Any) -> float:
    """Records per second, until the last one is committed."""
    batch = responses(size, count, run)
    with tempfile.TemporaryDirectory() as directory:
        recorder = steady_recorder(directory, **options)
        started = time.perf_counter()
        for response in batch:
            recorder.record(response)
        recorder.flush()
        elapsed = time.perf_counter() - started
        recorder.close()
        return count / elapsed


def floor_rate(size: int, count: int, run: int) -> float:
    """The same bytes with the raw libraries: one file per payload plus one committed SQLite row."""
    batch = responses(size, count, run)
    with tempfile.TemporaryDirectory() as directory:
        db = sqlite3.connect(os.path.join(directory, "floor.sqlite"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, request_id TEXT, sha256 TEXT, size INTEGER)")
        started = time.perf_counter()
        for response in batch:
            sha256 = hashlib.sha256(response.payload).hexdigest()
            Path(directory, sha256).write_bytes(response.payload)
            db.execute(
                "INSERT INTO r (request_id, sha256, size) VALUES (?, ?, ?)",
                (response.request_id, sha256, len(response.payload)),
            )
        elapsed = time.perf_counter() - started
        db.close()
        return count / elapsed


class SlowAdapter:
    """A remote source that takes ``delay`` seconds and answers 1 KB of JSON."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def fetch(self, request):  # type: ignore[no-untyped-def]
        time.sleep(self.delay)
        n = int(dict(request.params)["n"])
        return response_for(
            request, payload=payload(1024, n), status_code=200, content_type="application/json"
        )


# Pipelines compared on a miss: None (no recorder), or the AuditRecorder keywords.
MISS_MODES: dict[str, dict[str, Any] | None] = {
    "without recorder": None,
    "with recorder, sync": {"write_behind": False},
    "with recorder, write-behind": {"write_behind": True},
    "write-behind, no age bound": {"write_behind": True, "max_delay": None},
    # A live pipeline that records but replays in a separate, offline one: no replay lookup per miss.
    "write-behind, record only": {"write_behind": True, "replay": False},
}


def miss_times(mode: dict[str, Any] | None, count: int, run: int, delay: float) -> tuple[float, float]:
    """Median seconds per miss, and mean seconds per miss with the recorder's final flush and close.

    Each query is new, so memory misses every time (and so does the recorder's replay).
    """
    with tempfile.TemporaryDirectory() as directory:
        middle = [] if mode is None else [steady_recorder(directory, **mode)]
        pipeline = DataPipeline(
            [MemoryStore(), *middle, RemoteSource(SlowAdapter(delay))], [RawTransformer()]
        )
        times = []
        began = time.perf_counter()
        for n in range(count):
            query = {"path": "/item", "params": {"n": n + run * count, "run": run, "mode": str(mode)}}
            started = time.perf_counter()
            pipeline.get(JSON, query)
            times.append(time.perf_counter() - started)
        for recorder in middle:
            recorder.close()
        return statistics.median(times), (time.perf_counter() - began) / count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--count", type=int, default=300, help="responses per run")
    parser.add_argument("--delay", type=float, default=0.001, help="seconds the remote source takes")
    args = parser.parse_args(argv)

    print(f"command: {sys.executable} {' '.join(sys.argv)}")
    print(
        f"runs: {args.runs} (medians), {args.count} responses per run, python {sys.version.split()[0]}, "
        f"sqlite {sqlite3.sqlite_version}\n"
    )
    print(
        f"{'payload':<8} {'sync rec/s':>11} {'write-behind rec/s':>19} {'no age bound rec/s':>19} "
        f"{'file+sqlite floor rec/s':>24} {'floor/sync':>11}"
    )
    for size, label in ((1024, "1 KB"), (100 * 1024, "100 KB")):
        samples: dict[str, list[float]] = {"sync": [], "behind": [], "unbounded": [], "floor": []}
        for run in range(args.runs):  # interleaved, so machine noise hits all alike
            samples["sync"].append(recorder_rate(size, args.count, run, write_behind=False))
            samples["behind"].append(recorder_rate(size, args.count, run, write_behind=True))
            samples["unbounded"].append(
                recorder_rate(size, args.count, run, write_behind=True, max_delay=None)
            )
            samples["floor"].append(floor_rate(size, args.count, run))
        sync, behind, unbounded, floor = (statistics.median(samples[name]) for name in samples)
        print(
            f"{label:<8} {sync:>11,.0f} {behind:>19,.0f} {unbounded:>19,.0f} {floor:>24,.0f} "
            f"{floor / sync:>10.2f}x"
        )

    medians: dict[str, list[float]] = {name: [] for name in MISS_MODES}
    means: dict[str, list[float]] = {name: [] for name in MISS_MODES}
    for run in range(args.runs):
        for name, mode in MISS_MODES.items():
            median, mean = miss_times(mode, args.count, run, args.delay)
            medians[name].append(median)
            means[name].append(mean)
    print(
        f"\nremote miss, source takes {args.delay * 1000:.1f} ms, 1 KB answers "
        "(MemoryStore -> [AuditRecorder] -> source):"
    )
    print(f"{'pipeline':<28} {'ms per miss':>12} {'ratio':>7} {'mean ms incl. final flush':>26}")
    plain = statistics.median(medians["without recorder"])
    for name in MISS_MODES:
        median = statistics.median(medians[name])
        mean = statistics.median(means[name])
        print(f"{name:<28} {median * 1000:>12.3f} {median / plain:>6.3f}x {mean * 1000:>26.3f}")
    print("ms per miss: median of the per-run medians; goal: ratio < 1.1x")


if __name__ == "__main__":
    main()
