"""Batch inventory: acquisitions per second with 1 and 8 processes on SQLite and PostgreSQL.

Each acquisition takes a range of 10 items and releases it as succeeded (two
transactions). Beside it, "raw" is the least a hand-written job would do with
SQLAlchemy alone: lock, read its last id, read the next 10 ids, insert a row,
commit, then mark it done. Medians of several runs; the command is printed.

    .venv/bin/python benchmarks/bench_inventory.py [--runs 3] [--acquisitions 160]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import sqlalchemy as sa

from datapipelines.inventory import Inventory, Source
from datapipelines.inventory.storage import create_engine, lock

POSTGRES_URL = os.environ.get(
    "DATAPIPELINES_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BATCH = 10


@contextmanager
def database(kind: str) -> Iterator[tuple[str, str | None] | None]:
    """(url, schema) of an empty database of ``kind``, removed afterwards; None if unreachable."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            yield f"sqlite:///{directory}/bench.sqlite3", None
        return
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
    schema = f"dp_bench_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as connection:
            connection.execute(sa.schema.CreateSchema(schema))
    except sa.exc.OperationalError:
        yield None
        return
    try:
        yield POSTGRES_URL, schema
    finally:
        with engine.begin() as connection:
            connection.execute(sa.schema.DropSchema(schema, cascade=True))
        engine.dispose()


def make_items(url: str, schema: str | None, count: int) -> None:
    engine = sa.create_engine(url)
    items = sa.Table(
        "items", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True), sa.Column("size", sa.Integer),
        schema=schema,
    )  # fmt: skip
    with engine.begin() as connection:
        items.create(connection)
        connection.execute(items.insert(), [{"id": i, "size": 1} for i in range(count)])
    engine.dispose()


def inventory_worker(url: str, schema: str | None, table: str) -> Callable[[], Callable[[], bool]]:
    def prepare() -> Callable[[], bool]:
        source = Source("items", "id", "size", schema=schema)
        inventory = Inventory(url, schema=schema, table=table, source=source)
        inventory.acquire_batch("warm-up", count=1).succeeded()  # create the table, reflect the source

        def step() -> bool:
            batch = inventory.acquire_batch("job", count=BATCH)
            if batch is None:
                return False
            batch.succeeded()
            return True

        return step

    return prepare


def raw_worker(url: str, schema: str | None, table: str) -> Callable[[], Callable[[], bool]]:
    def prepare() -> Callable[[], bool]:
        engine = create_engine(url, immediate=True)  # the same BEGIN IMMEDIATE / advisory lock
        meta = sa.MetaData(schema=schema)
        ranges = sa.Table(
            table, meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("job", sa.String(50)),
            sa.Column("first", sa.Integer), sa.Column("last", sa.Integer), sa.Column("done", sa.Boolean),
        )  # fmt: skip
        items = sa.Table("items", meta, sa.Column("id", sa.Integer), sa.Column("size", sa.Integer))
        with engine.begin() as connection:
            lock(connection, ranges, "\0create")
            meta.create_all(connection, tables=[ranges])

        def step() -> bool:
            with engine.begin() as connection:
                lock(connection, ranges, "job")
                last = connection.execute(sa.select(sa.func.max(ranges.c.last)).where(ranges.c.job == "job"))
                start = (last.scalar() or -1) + 1
                ids = (
                    connection.execute(
                        sa.select(items.c.id).where(items.c.id >= start).order_by(items.c.id).limit(BATCH)
                    )
                    .scalars()
                    .all()
                )
                if not ids:
                    return False
                values = {"job": "job", "first": ids[0], "last": ids[-1], "done": False}
                row = connection.execute(sa.insert(ranges).values(values).returning(ranges.c.id)).scalar_one()
            with engine.begin() as connection:
                connection.execute(sa.update(ranges).where(ranges.c.id == row).values(done=True))
            return True

        return step

    return prepare


def _process(prepare, quota: int, ready, start, done) -> None:
    step = prepare()
    ready.put(True)
    start.wait()
    taken = 0
    while taken < quota and step():
        taken += 1
    done.put(taken)


def run_once(kind: str, mode: str, processes: int, acquisitions: int) -> float | None:
    """Acquisitions per second of one run, or None when the database is unreachable."""
    with database(kind) as found:
        if found is None:
            return None
        url, schema = found
        make_items(url, schema, (acquisitions + processes) * BATCH)
        factory = inventory_worker if mode == "inventory" else raw_worker
        prepare = factory(url, schema, f"bench_{mode}")
        context = multiprocessing.get_context("fork")
        ready, start, done = context.Queue(), context.Event(), context.Queue()
        quota = acquisitions // processes
        arguments = (prepare, quota, ready, start, done)
        workers = [context.Process(target=_process, args=arguments) for _ in range(processes)]
        for worker in workers:
            worker.start()
        for _ in workers:
            ready.get(timeout=120)
        began = time.perf_counter()
        start.set()
        total = sum(done.get(timeout=600) for _ in workers)
        elapsed = time.perf_counter() - began
        for worker in workers:
            worker.join()
        return total / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per cell; the median is printed (3)")
    parser.add_argument("--acquisitions", type=int, default=160, help="acquisitions per run, in all (160)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    args = parser.parse_args(argv)
    print("$", shlex.join([os.path.relpath(sys.executable), *sys.argv]))
    print(f"acquisitions/s (take {BATCH} items, release), median of {args.runs} runs, {os.cpu_count()} CPUs")
    header = f"{'database':<11} {'processes':>9} {'inventory':>10} {'raw':>10} {'raw/inventory':>14}"
    print(header)
    print("-" * len(header))
    for kind in args.backends:
        for processes in args.processes:
            medians = {}
            for mode in ("inventory", "raw"):
                rates = [run_once(kind, mode, processes, args.acquisitions) for _ in range(args.runs)]
                if None in rates:
                    medians = {}
                    break
                medians[mode] = statistics.median(r for r in rates if r is not None)
            if not medians:
                print(f"{kind:<11} {processes:>9}   skipped: no database answers")
                continue
            ratio = medians["raw"] / medians["inventory"]
            rates = f"{medians['inventory']:>10.0f} {medians['raw']:>10.0f}"
            print(f"{kind:<11} {processes:>9} {rates} {ratio:>13.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
