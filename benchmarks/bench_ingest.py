"""Files per second through the ingest: listener -> router -> archive + tags, in one process.

Two ways in: ``drain`` (a backlog of 1 KB files is in the folder when the ingest
starts) and ``live`` (another process renames them in while it runs). For each,
the durability modes of the archive (``none``, ``batch``, ``file``; ``file``
fsyncs every file, so it runs on ``--file-files`` only) and, beside them, the
floor: a plain loop of ``os.rename`` + ``json.dump`` doing the same moves and
sidecars with no framework. Rounds are interleaved; medians of ``--runs``.
Targets (2-core machine): none >= 5,000 files/s, batch >= 3,000 files/s.

    .venv/bin/python benchmarks/bench_ingest.py [--files 20000] [--file-files 2000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from datapipelines import DataPipeline
from datapipelines.ingest import ArchiveSink, DirectoryListener, FailurePolicy, Ingest, Router, Rule

TARGETS = {"none": 5_000, "batch": 3_000}
SENDER = """
import os, sys
staging, folder = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(staging)):
    os.rename(os.path.join(staging, name), os.path.join(folder, name))
"""


def make_pool(folder: Path, count: int) -> list[str]:
    """``count`` distinct 1 KB files, old enough to count as settled; each run links them into place."""
    folder.mkdir()
    names = [f"f{index:06d}.dat" for index in range(count)]
    payload = os.urandom(1024)
    past = time.time() - 3600
    for name in names:
        path = folder / name
        path.write_bytes(payload)
        os.utime(path, (past, past))
    return names


def link_all(pool: Path, names: list[str], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.link(pool / name, into / name)


def run_baseline(pool: Path, names: list[str], scratch: Path, live: bool) -> float:
    """The floor: list the folder, rename each file into the day's folder, dump its tags beside it."""
    incoming, archive = scratch / "incoming", scratch / "archive" / time.strftime("%Y%m%d")
    link_all(pool, names, incoming)
    archive.mkdir(parents=True)
    started = time.perf_counter()
    for entry in os.scandir(incoming):
        os.rename(entry.path, archive / entry.name)
        with open(archive / (entry.name + ".tags"), "w") as handle:
            json.dump(
                {"first.core.original_basename": entry.name, "first.core.original_uid": entry.name}, handle
            )
    return len(names) / (time.perf_counter() - started)


def run_ingest(pool: Path, names: list[str], scratch: Path, live: bool, durability: str) -> float:
    incoming, staging = scratch / "incoming", scratch / "staging"
    link_all(pool, names, staging if live else incoming)
    incoming.mkdir(exist_ok=True)
    archive = ArchiveSink(scratch / "archive", durability=durability)
    pipeline = DataPipeline([Router([Rule.always(archive)], no_match=FailurePolicy.delete())])
    listener = DirectoryListener(incoming, settle=0.5)
    ingest = Ingest(pipeline, listener)
    total = len(names)
    if live:
        ingest.start()
        sender = subprocess.Popen([sys.executable, "-c", SENDER, str(staging), str(incoming)])
        _wait(lambda: listener.counters["claimed"] >= 1)
        started = time.perf_counter()
    else:
        started = time.perf_counter()
        ingest.start()
    _wait(lambda: archive.counters["archived"] >= total and ingest.in_flight() == 0)
    elapsed = time.perf_counter() - started
    if live:
        sender.wait()
    overflows = listener.counters["overflows"]
    ingest.stop()
    if overflows:
        print(
            f"    ({durability}, live: {overflows} inotify overflow(s), recovered by rescans)",
            file=sys.stderr,
        )
    return total / elapsed


def _wait(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 600
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("the ingest did not finish within 600 s")
        time.sleep(0.02)  # a coarse poll: the measured threads keep the GIL to themselves


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument(
        "--file-files", type=int, default=2_000, help="files for durability=file (fsync each)"
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", default="drain,live")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        pool = root / "pool"
        names = make_pool(pool, args.files)
        cases: dict[str, tuple[Callable[[Path, list[str], Path, bool], float], int]] = {
            "os.rename + json.dump (floor)": (run_baseline, args.files),
            "ingest, durability none": (lambda p, n, s, live: run_ingest(p, n, s, live, "none"), args.files),
            "ingest, durability batch": (
                lambda p, n, s, live: run_ingest(p, n, s, live, "batch"),
                args.files,
            ),
            "ingest, durability file": (
                lambda p, n, s, live: run_ingest(p, n, s, live, "file"),
                args.file_files,
            ),
        }
        print(
            f"{args.files:,} files of 1 KB ({args.file_files:,} for durability=file), "
            f"medians of {args.runs} runs"
        )
        for mode in args.modes.split(","):
            live = mode == "live"
            samples: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.runs):
                for name, (run, count) in cases.items():
                    scratch = root / "scratch"
                    samples[name].append(run(pool, names[:count], scratch, live))
                    shutil.rmtree(scratch)
            floor = statistics.median(samples["os.rename + json.dump (floor)"])
            print(f"\n{mode}:")
            print(f"  {'case':<32} {'files/s':>10} {'vs floor':>9} {'target':>8}")
            for name, values in samples.items():
                rate = statistics.median(values)
                durability = name.rsplit(" ", 1)[-1]
                target = TARGETS.get(durability) if name.startswith("ingest") else None
                verdict = "" if target is None else f"{target:>6} {'ok' if rate >= target else 'BELOW'}"
                print(f"  {name:<32} {rate:>10,.0f} {rate / floor:>8.2f}x {verdict}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
