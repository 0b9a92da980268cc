"""Files per second through the ingest: listener -> router -> archive + tags, in one process.

Two ways in: ``drain`` (a backlog of 1 KB files is in the folder when the ingest
starts) and ``live`` (another process renames them in while it runs). For each,
the durability modes of the archive (``none``, ``batch``, ``file``; ``file``
fsyncs every file, so it runs on ``--file-files`` only) and, beside them, the
floor: a plain loop of ``os.rename`` + ``json.dump`` doing the same moves and
sidecars with no framework. Rounds are interleaved; medians of ``--runs``.
Targets (2-core machine): none >= 5,000 files/s, batch >= 3,000 files/s.

``--distributed``: the backlog through router -> step -> archive, once in one
process (the step inline) and once as 1 listener + 2 ``datapipelines ingest
worker`` processes over Redis Streams (a private redis-server), beside the raw
rate of the same Redis in the same run (pipelined XADD, then XREADGROUP + XACK +
XDEL in reads of 20) and, with ``--poison``, the distributed run again with one
file that kills its worker every time (the others must keep >= 80 % of the clean
rate). Target: >= 4,000 files/s end to end. The disk is often the limit: set
TMPDIR=/dev/shm to see the rest.

    .venv/bin/python benchmarks/bench_ingest.py [--files 20000] [--file-files 2000] [--runs 3]
    .venv/bin/python benchmarks/bench_ingest.py --distributed [--poison] [--files 20000] [--runs 3]
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
from datapipelines.ingest import (
    ArchiveSink,
    DirectoryListener,
    FailurePolicy,
    IncomingFile,
    Ingest,
    Router,
    Rule,
    Step,
)

DISTRIBUTED_TARGET = 4_000

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


def pass_file(file: IncomingFile) -> None:
    """The benchmarks' step: accepts every file but one called poison*, which kills its worker."""
    if file.name.startswith("poison"):
        os._exit(9)


def run_single(pool: Path, names: list[str], scratch: Path) -> float:
    """router -> step (inline) -> archive in one process, the backlog in place at start."""
    incoming = scratch / "incoming"
    link_all(pool, names, incoming)
    archive = ArchiveSink(scratch / "archive")
    step = Step("parse", pass_file, then=archive)
    pipeline = DataPipeline([Router([Rule.always(step)], no_match=FailurePolicy.delete())])
    ingest = Ingest(pipeline, DirectoryListener(incoming, settle=0.5))
    started = time.perf_counter()
    ingest.start()
    _wait(lambda: archive.counters["archived"] >= len(names) and ingest.in_flight() == 0)
    elapsed = time.perf_counter() - started
    ingest.stop()
    return len(names) / elapsed


def run_raw_redis(url: str, count: int) -> float:
    """The same Redis without the ingest: pipelined XADD of ``count`` payloads of an ingest entry's
    size, then XREADGROUP of 20 at a time, each read's XACK + XDEL in one pipeline."""
    import redis

    client = redis.Redis.from_url(url)
    stream, group = "bench:raw", "raw"
    client.delete(stream)
    client.xgroup_create(stream, group, id="0", mkstream=True)
    payload = "x" * 600
    started = time.perf_counter()
    for offset in range(0, count, 500):
        with client.pipeline(transaction=False) as pipe:
            for _ in range(min(500, count - offset)):
                pipe.xadd(stream, {"payload": payload})
            pipe.execute()
    done = 0
    while done < count:
        reply = client.xreadgroup(group, "c", {stream: ">"}, count=20)
        ids = [entry_id for _, entries in reply for entry_id, _ in entries]
        with client.pipeline(transaction=True) as pipe:
            pipe.xack(stream, group, *ids)
            pipe.xdel(stream, *ids)
            pipe.execute()
        done += len(ids)
    elapsed = time.perf_counter() - started
    client.delete(stream)
    client.close()
    return count / elapsed


CONFIG = """
[listener]
watch = "incoming"
settle = 0.5
max_in_flight = 1000000
[router]
no_match = "delete"
[[rule]]
kind = "always"
targets = ["parse"]
[[step]]
name = "parse"
function = "bench_ingest:pass_file"
then = "archive"
max_deliveries = 3
queue = {{ url = "{url}", prefix = "{prefix}", lease = 2 }}
[[archive]]
name = "archive"
root = "archive"
template = "{{original_basename}}"
"""


def run_distributed(pool: Path, names: list[str], scratch: Path, url: str, poison: bool) -> float:
    """1 listener (this process) + 2 worker processes; files/s of the good files, start to archived."""
    from datapipelines.ingest.config import load_config

    incoming = scratch / "incoming"
    link_all(pool, names, incoming)
    if poison:
        (incoming / "poison.dat").write_bytes(b"x")
        os.utime(incoming / "poison.dat", (time.time() - 3600,) * 2)
    config = scratch / "ingest.toml"
    config.write_text(CONFIG.format(url=url, prefix=f"bench{time.monotonic_ns()}"))
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    log = scratch / "worker.log"
    command = [sys.executable, "-m", "datapipelines.cli", "ingest", "worker", str(config), "--step", "parse"]
    with open(log, "wb") as output:
        workers = subprocess.Popen(
            [*command, "-n", "2", "--log-level", "INFO"], env=environment, stdout=output, stderr=output
        )
    _wait(lambda: log.read_text().count("reading from") >= 2)
    archive = scratch / "archive"
    ingest = load_config(config).build()
    started = time.perf_counter()
    ingest.start()
    _wait(lambda: _count_files(archive) >= len(names))
    elapsed = time.perf_counter() - started
    ingest.stop()
    workers.terminate()
    workers.wait(60)
    return len(names) / elapsed


def _count_files(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for entry in entries if not entry.name.endswith(".tags") and entry.is_file())
    except FileNotFoundError:
        return 0


def distributed_main(args: argparse.Namespace, root: Path, pool: Path, names: list[str]) -> None:
    from datapipelines.redis.testing import RedisServer

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--distributed needs redis-server on PATH (a private one is started)")
    server = RedisServer(binary)
    server.start()
    url = server.url
    try:
        cases: dict[str, Callable[[Path], float]] = {
            "raw XADD, XREADGROUP+XACK": lambda scratch: run_raw_redis(url, len(names)),
            "one process (step inline)": lambda scratch: run_single(pool, names, scratch),
            "1 listener + 2 workers": lambda scratch: run_distributed(pool, names, scratch, url, False),
        }
        if args.poison:
            cases["the same, one poison file"] = lambda scratch: run_distributed(
                pool, names, scratch, url, True
            )
        samples: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, run in cases.items():
                scratch = root / "scratch"
                scratch.mkdir()
                samples[name].append(run(scratch))
                shutil.rmtree(scratch)
    finally:
        server.kill()
    rates = {name: statistics.median(values) for name, values in samples.items()}
    single = rates["one process (step inline)"]
    clean = rates["1 listener + 2 workers"]
    where = f"{len(names):,} files of 1 KB in {root.parent}"
    print(f"\n{where}, router -> step -> archive, medians of {args.runs}:")
    print(f"  {'case':<28} {'files/s':>10} {'vs one process':>15}")
    for name, rate in rates.items():
        print(f"  {name:<28} {rate:>10,.0f} {rate / single:>14.2f}x")
    print(f"  distributed: {clean:,.0f} files/s, target {DISTRIBUTED_TARGET:,} "
          f"{'ok' if clean >= DISTRIBUTED_TARGET else 'BELOW'}")  # fmt: skip
    if args.poison:
        share = rates["the same, one poison file"] / clean
        print(f"  with a poison file: {share:.0%} of the clean rate (goal >= 80 %)")


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
    parser.add_argument("--distributed", action="store_true", help="one process vs listener + 2 workers")
    parser.add_argument("--poison", action="store_true", help="with --distributed: a poison file too")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    try:
        pool = root / "pool"
        names = make_pool(pool, args.files)
        if args.distributed:
            distributed_main(args, root, pool, names)
            return
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
