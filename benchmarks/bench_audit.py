"""Audit recorder throughput, and the cost it adds to a remote miss.

1. Recorded responses per second for 1 KB and 100 KB payloads, beside the floor of
   the libraries underneath (the same file write plus one SQLite insert in WAL mode).
2. A miss through MemoryStore -> source that takes 1 ms, with and without an
   AuditRecorder in between: the ratio is what recording costs (goal: under 1.1x).

Medians of several runs. Run: .venv/bin/python benchmarks/bench_audit.py [--runs N]
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

from datapipelines.sinks.audit import AuditRecorder
from datapipelines.sinks.memory import MemoryStore
from datapipelines.transformers import JSON, RawTransformer

from datapipelines import DataPipeline
from datapipelines.remote import RawResponse, RemoteSource, request_for, response_for


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


def recorder_rate(size: int, count: int, run: int) -> float:
    batch = responses(size, count, run)
    with tempfile.TemporaryDirectory() as directory, AuditRecorder(directory) as recorder:
        started = time.perf_counter()
        for response in batch:
            recorder.record(response)
        return count / (time.perf_counter() - started)


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
        return response_for(
            request, payload=payload(1024, 0), status_code=200, content_type="application/json"
        )


def miss_time(with_recorder: bool, count: int, run: int, delay: float) -> float:
    """Median seconds per miss (each query new, so memory misses every time)."""
    with tempfile.TemporaryDirectory() as directory:
        recorder = AuditRecorder(directory)
        middle = [recorder] if with_recorder else []
        pipeline = DataPipeline(
            [MemoryStore(), *middle, RemoteSource(SlowAdapter(delay))], [RawTransformer()]
        )
        times = []
        for n in range(count):
            query = {"path": "/item", "params": {"n": n, "run": run, "recorded": with_recorder}}
            started = time.perf_counter()
            pipeline.get(JSON, query)
            times.append(time.perf_counter() - started)
        recorder.close()
        return statistics.median(times)


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
    rows = []
    for size, label in ((1024, "1 KB"), (100 * 1024, "100 KB")):
        ours = statistics.median(recorder_rate(size, args.count, run) for run in range(args.runs))
        floor = statistics.median(floor_rate(size, args.count, run) for run in range(args.runs))
        rows.append((label, ours, floor))
    print(f"{'payload':<8} {'AuditRecorder rec/s':>20} {'file+sqlite floor rec/s':>24} {'floor/ours':>11}")
    for label, ours, floor in rows:
        print(f"{label:<8} {ours:>20,.0f} {floor:>24,.0f} {floor / ours:>10.2f}x")

    plain = statistics.median(miss_time(False, args.count, run, args.delay) for run in range(args.runs))
    recorded = statistics.median(miss_time(True, args.count, run, args.delay) for run in range(args.runs))
    print(
        f"\nremote miss, source takes {args.delay * 1000:.1f} ms (MemoryStore -> [AuditRecorder] -> source):"
    )
    print(f"{'pipeline':<24} {'ms per miss':>12}")
    print(f"{'without recorder':<24} {plain * 1000:>12.3f}")
    print(f"{'with AuditRecorder':<24} {recorded * 1000:>12.3f}")
    print(f"{'ratio':<24} {recorded / plain:>11.3f}x   (goal < 1.1x)")


if __name__ == "__main__":
    main()
