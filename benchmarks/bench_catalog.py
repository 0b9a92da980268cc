"""Records per second through the catalogue, on SQLite and PostgreSQL.

* ``get``: one ``pipeline.get`` per item, the catalogue in front of a source
  (one transaction per item, as a pipeline records what it fetches);
* ``get_many``: ``pipeline.get_many`` of 1,000 items at a time (one put_many,
  one transaction per batch);
* ``generate``: ``catalog.generate`` over JSON metadata files into an empty
  catalogue, and a resync where nothing changed.

Beside each, the raw libraries underneath: SQLAlchemy Core inserting the same
number of rows with as many transactions (for generate, after reading and
parsing the same files with json), so the ratio shows what the catalogue adds
(hashing, keys, flattening, JSON fields, upserts). Medians of ``--runs``.

    .venv/bin/python benchmarks/bench_catalog.py [--items 300] [--bulk-items 10000]
        [--files 10000] [--runs 3] [--no-postgres]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy
from sqlalchemy import Column, Integer, MetaData, Table, Text, create_engine, insert, text

from datapipelines import DataPipeline, DataSource
from datapipelines.sinks.catalog import Catalog

POSTGRES_URL = os.environ.get(
    "DATAPIPELINES_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BATCH = 1000


@dataclasses.dataclass
class Document:
    number: int
    kind: str
    title: str


class Documents(DataSource):
    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        raise NotImplementedError

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        raise NotImplementedError

    @get.register(Document)
    def get_document(self, query: Any, context: Any = None) -> Document:
        return make_document(query["number"])

    @get_many.register(Document)
    def get_documents(self, query: Any, context: Any = None) -> list[Document]:
        return [make_document(n) for n in range(query["first"], query["first"] + query["count"])]


def make_document(number: int) -> Document:
    return Document(number, "contract" if number % 2 else "letter", f"Document number {number}")


# -- databases ------------------------------------------------------------------------
class Databases:
    """Fresh, empty databases: SQLite files in a temp dir, or PostgreSQL schemas dropped at the end."""

    def __init__(self, backend: str, directory: Path) -> None:
        self.backend = backend
        self.directory = directory
        self.schemas: list[str] = []
        self.admin = create_engine(POSTGRES_URL) if backend == "postgresql" else None

    def new(self) -> str:
        if self.admin is None:
            return f"sqlite:///{self.directory / uuid.uuid4().hex}.db"
        schema = f"dp_bench_{uuid.uuid4().hex[:12]}"
        with self.admin.begin() as connection:
            connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        self.schemas.append(schema)
        url = sqlalchemy.make_url(POSTGRES_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def close(self) -> None:
        if self.admin is not None:
            with self.admin.begin() as connection:
                for schema in self.schemas:
                    connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            self.admin.dispose()


def postgres_answers() -> bool:
    try:
        engine = create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except sqlalchemy.exc.OperationalError:
        return False


# -- measurements: each returns seconds for its ``count`` records ----------------------------
def through_get(url: str, count: int) -> float:
    catalog = Catalog(url, fields={Document: lambda d: {"document_type": d.kind}})
    pipeline = DataPipeline([catalog, Documents()])
    started = time.perf_counter()
    for number in range(count):
        pipeline.get(Document, {"number": number})
    elapsed = time.perf_counter() - started
    assert catalog.count() == count
    catalog.close()
    return elapsed


def through_get_many(url: str, count: int) -> float:
    catalog = Catalog(url, fields={Document: lambda d: {"document_type": d.kind}})
    pipeline = DataPipeline([catalog, Documents()], query_from={Document: lambda d: {"number": d.number}})
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        pipeline.get_many(Document, {"first": first, "count": min(BATCH, count - first)})
    elapsed = time.perf_counter() - started
    assert catalog.count() == count
    catalog.close()
    return elapsed


def raw_table(url: str) -> tuple[sqlalchemy.Engine, Table]:
    engine = create_engine(url)
    table = Table(
        "raw_records", MetaData(), Column("id", Integer, primary_key=True), Column("key", Text, unique=True),
        Column("payload", Text),
    )  # fmt: skip
    table.metadata.create_all(engine)
    return engine, table


def raw_rows(url: str, count: int, per_transaction: int) -> float:
    """SQLAlchemy Core alone: insert ``count`` rows of similar width, ``per_transaction`` at a time."""
    engine, table = raw_table(url)
    rows = [
        {"key": f"document:v1:{n:032x}", "payload": json.dumps(dataclasses.asdict(make_document(n)))}
        for n in range(count)
    ]
    started = time.perf_counter()
    for first in range(0, count, per_transaction):
        with engine.begin() as connection:
            connection.execute(insert(table), rows[first : first + per_transaction])
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def raw_generate(url: str, folder: Path) -> float:
    """json and SQLAlchemy Core alone: read and parse every file, insert one row each, one transaction."""
    engine, table = raw_table(url)
    started = time.perf_counter()
    rows = []
    for path in sorted(folder.rglob("*.json")):
        document = json.loads(path.read_bytes())
        rows.append({"key": document["id"], "payload": json.dumps(document)})
    with engine.begin() as connection:
        connection.execute(insert(table), rows)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def write_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(count):
        document = {
            "id": f"doc-{number}",
            "document_type": "contract" if number % 2 else "letter",
            "retrieved_at": "2024-01-01T00:00:00+00:00",
            "meta": {"lang": "de", "pages": number % 40},
        }
        (folder / f"{number // 1000:03d}" / f"{number}.json").parent.mkdir(exist_ok=True)
        (folder / f"{number // 1000:03d}" / f"{number}.json").write_text(json.dumps(document))


def generate_fresh(url: str, folder: Path, count: int) -> float:
    catalog = Catalog(url)
    started = time.perf_counter()
    counts = catalog.generate(folder, required=["document_type"])
    elapsed = time.perf_counter() - started
    assert counts.added == count, counts
    catalog.close()
    return elapsed


# -- reporting ----------------------------------------------------------------------------
def median_rate(measure: Callable[[], float], count: int, runs: int) -> float:
    return count / statistics.median(measure() for _ in range(runs))


Row = tuple[str, str, int, float, "float | None"]


def measure(backend: str, new: Callable[[], str], files: Path, args: argparse.Namespace) -> list[Row]:
    """Every measurement on one backend; ``new()`` gives an empty database each time."""
    items, bulk, count, runs = args.items, args.bulk_items, args.files, args.runs
    rows: list[Row] = [
        (
            backend, "pipeline.get, 1 record per transaction", items,
            median_rate(lambda: through_get(new(), items), items, runs),
            median_rate(lambda: raw_rows(new(), items, 1), items, runs),
        ),
        (
            backend, f"pipeline.get_many, {BATCH} per put_many", bulk,
            median_rate(lambda: through_get_many(new(), bulk), bulk, runs),
            median_rate(lambda: raw_rows(new(), bulk, BATCH), bulk, runs),
        ),
        (
            backend, "generate, new files", count,
            median_rate(lambda: generate_fresh(new(), files, count), count, runs),
            median_rate(lambda: raw_generate(new(), files), count, runs),
        ),
    ]  # fmt: skip
    catalog = Catalog(new())
    catalog.generate(files)

    def resync() -> float:
        started = time.perf_counter()
        assert catalog.generate(files).skipped == count
        return time.perf_counter() - started

    rows.append((backend, "generate, nothing changed", count, median_rate(resync, count, runs), None))
    catalog.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=300, help="items fetched one get at a time")
    parser.add_argument("--bulk-items", type=int, default=10000, help="items fetched by get_many")
    parser.add_argument("--files", type=int, default=10000, help="metadata files for generate")
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement; the median is shown")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    args = parser.parse_args(argv)

    backends = ["sqlite"]
    if not args.no_postgres:
        if postgres_answers():
            backends.append("postgresql")
        else:
            print(f"(no PostgreSQL answers at {POSTGRES_URL}: SQLite only)")

    results = []
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        files = directory / "metadata"
        write_files(files, args.files)
        for backend in backends:
            databases = Databases(backend, directory)
            try:
                results += measure(backend, databases.new, files, args)
            finally:
                databases.close()

    command = shlex.join(
        ["python", "benchmarks/bench_catalog.py", *(argv if argv is not None else sys.argv[1:])]
    )
    print(f"command: {command}")
    print(
        f"median of {args.runs} runs; records per second; raw = the same rows through SQLAlchemy Core alone\n"
    )
    header = f"{'backend':<11} {'path':<40} {'records':>8} {'catalog/s':>10} {'raw/s':>10} {'ratio':>6}"
    print(header)
    print("-" * len(header))
    for backend, path, count, rate, raw in results:
        raw_text = f"{raw:>10,.0f}" if raw else f"{'-':>10}"
        ratio = f"{rate / raw:>6.2f}" if raw else f"{'-':>6}"
        print(f"{backend:<11} {path:<40} {count:>8} {rate:>10,.0f} {raw_text} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
