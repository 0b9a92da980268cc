"""Batch inventory: ranges, budgets, filters, releases, retries, leases, backfills, recursion."""

from __future__ import annotations

import json
import os
from datetime import datetime

import pytest
import sqlalchemy as sa

from datapipelines.cli import main
from datapipelines.database import database_url
from datapipelines.errors import ConfigurationError
from datapipelines.inventory import (
    BatchReleasedError,
    BatchResultError,
    Inventory,
    Settings,
    Source,
    configure,
    load_settings,
)
from tests.support import inventory as support
from tests.support.clock import FakeClock
from tests.support.inventory import Database

db, sqlite_db, postgres_db, clock = support.db, support.sqlite_db, support.postgres_db, support.clock


def ids(batch):
    return [item["id"] for item in batch.items]


def test_acceptance(db: Database) -> None:
    db.items()  # ids 0..9, weight 2*id
    inventory = db.inventory()
    done = inventory.acquire_batch("j1", count=5)
    assert done.id_range == (0, 4)
    done.succeeded()

    batch = inventory.acquire_batch("j1")
    assert (batch.id_range, ids(batch), batch.attempt) == ((5, 9), [5, 6, 7, 8, 9], 1)
    batch.failed(RuntimeError("disk full"))
    again = inventory.acquire_batch("j1")
    assert (again.id_range, again.attempt, again.id) == ((5, 9), 2, batch.id)

    fresh = inventory.acquire_batch("j2", weight=12)
    assert (fresh.id_range, fresh.count, fresh.weight) == ((0, 3), 4, 12)

    backfill = inventory.acquire_batch("j1", id_min=2, id_max=4)
    assert (backfill.id_range, backfill.count, backfill.weight, backfill.backfill) == ((2, 4), 3, 18, True)

    alone = inventory.acquire_batch("j3", id_min=7, weight=5)
    assert (alone.id_range, alone.count, alone.weight) == ((7, 7), 1, 14)


def test_weight_and_count_budgets(db: Database) -> None:
    db.items(ids=range(1, 11), weight=lambda i: i)
    inventory = db.inventory()
    assert inventory.acquire_batch("w", weight=6).id_range == (1, 3)  # 1+2+3
    assert inventory.acquire_batch("w", weight=6).id_range == (4, 4)  # 4+5 > 6
    assert inventory.acquire_batch("w", weight=6).id_range == (5, 5)
    assert inventory.acquire_batch("w", weight=6).id_range == (6, 6)  # exactly the budget
    assert inventory.acquire_batch("w", weight=6).id_range == (7, 7)  # heavier than the budget: alone
    assert inventory.acquire_batch("c", count=4).id_range == (1, 4)
    both = inventory.acquire_batch("c", count=4, weight=100)
    assert (both.id_range, both.count, both.weight) == ((5, 8), 4, 26)
    assert inventory.acquire_batch("c", count=4, weight=9).id_range == (9, 9)
    rest = inventory.acquire_batch("c")
    assert (rest.id_range, rest.count) == ((10, 10), 1)
    assert inventory.acquire_batch("c") is None


def test_long_ranges_are_read_in_pages(db: Database) -> None:
    db.items(ids=range(1000), weight=lambda i: 1, extra=None)
    inventory = db.inventory()
    big = inventory.acquire_batch("j", weight=700)
    assert (big.id_range, big.count, big.weight) == ((0, 699), 700, 700)
    rest = inventory.acquire_batch("j")
    assert (rest.id_range, rest.count) == ((700, 999), 300)
    batches = inventory.acquire_batches("k", 3, count=400)
    assert [b.id_range for b in batches] == [(0, 399), (400, 799), (800, 999)]


def test_nothing_left_then_new_items(db: Database) -> None:
    table = db.items(ids=[])
    inventory = db.inventory()
    assert inventory.acquire_batch("j") is None
    db.add(table, range(3))
    batch = inventory.acquire_batch("j")
    assert ids(batch) == [0, 1, 2]
    batch.succeeded()
    assert inventory.acquire_batch("j") is None
    db.add(table, range(3, 5))
    assert inventory.acquire_batch("j").id_range == (3, 4)


def test_no_weight_column_counts_items_and_null_weighs_nothing(db: Database) -> None:
    db.items(weight=lambda i: None if i < 5 else 1)
    inventory = db.inventory()
    by_count = inventory.acquire_batch("plain", weight=3, source=db.source(weight_column=None))
    assert (by_count.id_range, by_count.weight) == ((0, 2), 3)
    nulls = inventory.acquire_batch("nulls", weight=2)
    assert (nulls.id_range, nulls.weight) == ((0, 6), 2)


@pytest.mark.parametrize(
    "where",
    [
        {"tag": "even"},
        {"tag": ["even"]},
        sa.column("tag") == "even",
        lambda table: table.c.tag == "even",
    ],
    ids=["mapping", "in-list", "expression", "function"],
)
def test_where_filters_items(db: Database, where) -> None:
    db.items()
    inventory = db.inventory()
    batch = inventory.acquire_batch("even", count=3, where=where)
    assert (batch.id_range, ids(batch), batch.count, batch.weight) == ((0, 4), [0, 2, 4], 3, 12)
    batch.succeeded()
    assert ids(inventory.acquire_batch("even", where=where)) == [6, 8]
    assert inventory.acquire_batch("even", where=where) is None


def test_source_filter_combines_with_acquire_filter(db: Database) -> None:
    db.items()
    inventory = db.inventory(source=db.source(where={"tag": "odd"}))
    batch = inventory.acquire_batch("j", where=lambda table: table.c.id > 4)
    assert ids(batch) == [5, 7, 9]
    assert "tag" in batch.record.config["where"] and "'odd'" in batch.record.config["where"]


def test_release_twice_is_refused(db: Database) -> None:
    db.items()
    inventory = db.inventory()
    batch = inventory.acquire_batch("j", count=2)
    batch.succeeded({"rows": 2})
    with pytest.raises(BatchReleasedError, match=r"already released as succeeded"):
        batch.succeeded()
    with pytest.raises(BatchReleasedError, match=r"already released as succeeded"):
        batch.failed("late")
    other = inventory.batches("j")[0]
    assert (other.status, other.result, other.log) == ("succeeded", {"rows": 2}, None)

    # A second Batch object for the same attempt cannot release it either.
    failed = inventory.acquire_batch("j", count=2)
    twin = type(failed)(inventory, failed.record, failed._source, None)
    failed.failed("first")
    with pytest.raises(BatchReleasedError, match=r"already released as failed"):
        twin.succeeded()


def test_release_twice_is_a_value_error_as_upstream(db: Database) -> None:
    db.items()
    batch = db.inventory().acquire_batch("j", count=2)
    batch.succeeded()
    with pytest.raises(ValueError, match=r"already released"):  # pybatchintory code catches ValueError
        batch.failed("late")


def test_succeeded_and_failed_record_a_log(db: Database) -> None:
    db.items()
    inventory = db.inventory(job_identifier="worker-a")
    inventory.acquire_batch("j", count=2).succeeded({"rows": 2}, log="2 rows written\nno warnings\n")
    [done] = inventory.batches("j")
    assert (done.status, done.result) == ("succeeded", {"rows": 2})
    assert done.log is not None
    head, *body = done.log.splitlines()
    assert head.startswith("attempt 1 (worker-a) succeeded at 2")
    assert body == ["2 rows written", "no warnings"]

    inventory.acquire_batch("j", count=2).failed(RuntimeError("disk full"), log="wrote 1 of 2 rows")
    failed = inventory.batches("j")[1]
    assert failed.log is not None
    assert failed.log.splitlines()[1] == "wrote 1 of 2 rows"
    assert "RuntimeError: disk full" in failed.log


def test_weight_is_a_float_whether_running_or_released(db: Database) -> None:
    db.items()
    inventory = db.inventory()
    running = inventory.acquire_batch("j", count=3)
    assert type(running.weight) is float and running.weight == 6.0
    assert type(running.record.weight) is float
    assert all(type(r.weight) is float for r in inventory.batches("j"))
    running.succeeded()
    [released] = inventory.batches("j")
    assert type(released.weight) is float and released.weight == 6.0
    assert type(inventory.jobs()[0].weight) is float
    unweighted = db.inventory(source=db.source(weight_column=None)).acquire_batch("k", count=2)
    assert type(unweighted.weight) is float and unweighted.weight == 2.0


def test_result_must_be_json(db: Database) -> None:
    db.items()
    inventory = db.inventory()
    batch = inventory.acquire_batch("j", count=2)
    with pytest.raises(BatchResultError, match=r"cannot be stored as JSON.*still running"):
        batch.succeeded({"when": object()})
    assert inventory.batches("j")[0].status == "running"
    batch.succeeded({"ok": [1, 2.5, "x", None]})
    assert inventory.batches("j")[0].result == {"ok": [1, 2.5, "x", None]}


def test_failures_are_retried_up_to_max_attempts_then_retry_grants_one_more(db: Database) -> None:
    db.items()
    inventory = db.inventory(max_attempts=2)
    first = inventory.acquire_batch("j", count=3)
    try:
        raise ValueError("bad row 1")
    except ValueError as error:
        first.failed(error)
    second = inventory.acquire_batch("j", count=3, weight=1)  # the retry ignores the new budget
    assert (second.id_range, second.attempt) == ((0, 2), 2)
    second.failed("bad row 2")
    nxt = inventory.acquire_batch("j", count=3)
    assert (nxt.id_range, nxt.attempt) == ((3, 5), 1)  # attempts used up: new items come

    record = inventory.batches("j")[0]
    assert (record.status, record.attempt, record.max_attempts) == ("failed", 2, 2)
    assert "ValueError: bad row 1" in record.log and "Traceback" in record.log
    assert "attempt 2" in record.log and "bad row 2" in record.log
    [summary] = inventory.jobs()
    assert (summary.failed, summary.exhausted, summary.running, summary.last_id) == (1, 1, 1, 5)

    assert inventory.retry("other-job") == 0
    assert inventory.retry("j") == 1
    third = inventory.acquire_batch("j", count=3)
    assert (third.id_range, third.attempt) == ((0, 2), 3)
    third.succeeded()
    assert inventory.retry() == 0
    assert "bad row 1" in inventory.batches("j")[0].log  # history kept


def test_retry_by_row_id(db: Database) -> None:
    db.items()
    inventory = db.inventory(max_attempts=1)
    a = inventory.acquire_batch("j", count=2)
    b = inventory.acquire_batch("j", count=2)
    a.failed("a")
    b.failed("b")
    assert inventory.retry(ids=[b.id]) == 1
    assert inventory.acquire_batch("j", count=2).id_range == (2, 3)
    assert inventory.acquire_batch("j", count=2).id_range == (4, 5)


def test_abandoned_batch_is_offered_again_after_its_lease(db: Database, clock: FakeClock) -> None:
    db.items()
    inventory = db.inventory(lease=60, clock=clock)
    lost = inventory.acquire_batch("j", count=3, job_identifier="worker-a")
    clock.advance(59)
    assert inventory.acquire_batch("j", count=3).id_range == (3, 5)  # lease still held
    clock.advance(2)
    retaken = inventory.acquire_batch("j", count=3, job_identifier="worker-b")
    assert (retaken.id_range, retaken.attempt, retaken.id) == ((0, 2), 2, lost.id)
    with pytest.raises(BatchReleasedError, match=r"taken over as attempt 2 by worker-b"):
        lost.succeeded()
    retaken.succeeded("done")
    record = inventory.batches("j")[0]
    assert (record.status, record.result, record.job_identifier) == ("succeeded", "done", "worker-b")
    assert "attempt 1 (worker-a): lease expired" in record.log


def test_renew_keeps_the_lease(db: Database, clock: FakeClock) -> None:
    db.items()
    inventory = db.inventory(lease=60, clock=clock)
    batch = inventory.acquire_batch("j", count=3)
    clock.advance(50)
    batch.renew(120)
    clock.advance(100)
    assert inventory.acquire_batch("j", count=3).id_range == (3, 5)
    batch.succeeded()
    with pytest.raises(BatchReleasedError, match=r"too late to renew"):
        batch.renew()


def test_abandoned_batch_without_attempts_left_becomes_failed(db: Database, clock: FakeClock) -> None:
    db.items()
    inventory = db.inventory(lease=60, clock=clock, max_attempts=1)
    lost = inventory.acquire_batch("j", count=5)
    clock.advance(61)
    [summary] = inventory.jobs()
    assert summary.expired == 1
    assert inventory.acquire_batch("j", count=5).id_range == (5, 9)
    record = inventory.batches("j", status="failed")[0]
    assert (record.id, record.attempt) == (lost.id, 1)
    assert "no attempts left" in record.log
    with pytest.raises(BatchReleasedError, match=r"already released as failed"):
        lost.succeeded()


def test_backfill_ranges_are_rows_of_their_own_and_never_overlap(db: Database) -> None:
    db.items()
    inventory = db.inventory()
    inventory.acquire_batch("j", count=5).succeeded()
    middle = inventory.acquire_batch("j", id_min=2, id_max=4)
    assert (middle.id_range, middle.backfill) == ((2, 4), True)
    # A wider backfill fills the gaps around ranges the job's backfills already hold.
    assert inventory.acquire_batch("j", id_min=0, id_max=9, count=3).id_range == (0, 1)
    assert inventory.acquire_batch("j", id_min=0, id_max=9, count=3).id_range == (5, 7)
    assert inventory.acquire_batch("j", id_min=0, id_max=9, count=3).id_range == (8, 9)
    assert inventory.acquire_batch("j", id_min=0, id_max=9) is None
    assert inventory.acquire_batch("j", id_min=3) is None
    # Incremental work goes on after the last incremental range; another job's backfill is its own.
    assert inventory.acquire_batch("j").id_range == (5, 9)
    assert inventory.acquire_batch("k", id_max=3, weight=6).id_range == (0, 2)
    rows = inventory.batches("j")
    assert [(r.id_range, r.backfill) for r in rows] == [
        ((0, 4), False), ((2, 4), True), ((0, 1), True), ((5, 7), True), ((8, 9), True), ((5, 9), False)
    ]  # fmt: skip


def test_backfill_skips_filtered_gaps_and_retries_within_its_window(db: Database) -> None:
    db.items()
    inventory = db.inventory()
    inventory.acquire_batch("j", id_min=4, id_max=5)
    evens = inventory.acquire_batch("j", id_min=0, id_max=9, where={"tag": "odd"}, count=1)
    assert evens.id_range == (1, 1)
    evens.failed("no")
    assert inventory.acquire_batch("j", id_min=6, id_max=9, where={"tag": "odd"}).id_range == (7, 9)
    retried = inventory.acquire_batch("j", id_min=0, id_max=3, where={"tag": "odd"})
    assert (retried.id_range, retried.attempt) == ((1, 1), 2)
    assert inventory.acquire_batch("j", id_min=0, id_max=9, where={"tag": "odd"}).id_range == (3, 3)
    assert inventory.acquire_batch("j", id_min=0, id_max=9, where={"tag": "odd"}) is None
    retried.failed("again")
    # A failed backfill range is not offered to the job's incremental acquisitions.
    assert inventory.acquire_batch("j", count=1).id_range == (0, 0)
    assert inventory.acquire_batch("j", id_min=0, id_max=9).id_range == (1, 1)


def test_acquire_batches_and_process(db: Database) -> None:
    db.items()
    inventory = db.inventory()
    batches = inventory.acquire_batches("j", 3, weight=10)
    assert [b.id_range for b in batches] == [(0, 2), (3, 3), (4, 4)]
    assert batches[0].process(lambda items, k: sum(i["weight"] for i in items) * k, 2) == 12
    with pytest.raises(ZeroDivisionError):
        batches[1].process(lambda items: 1 / 0)
    assert [r.status for r in inventory.batches("j")] == ["succeeded", "failed", "running"]
    assert inventory.batches("j")[0].result == 12
    assert "ZeroDivisionError" in inventory.batches("j")[1].log
    again = inventory.acquire_batches("j", 5, weight=30)
    assert [(b.id_range, b.attempt) for b in again] == [((3, 3), 2), ((5, 6), 1), ((7, 8), 1), ((9, 9), 1)]
    assert inventory.acquire_batches("j", 2) == []


def test_recursion_second_stage_takes_finished_batches(db: Database) -> None:
    db.items(ids=range(12), weight=lambda i: 1)
    inventory = db.inventory()
    first = inventory.acquire_batches("stage1", 4, count=3)
    first[0].succeeded()
    first[2].succeeded()
    first[3].failed("flaky")
    finished = inventory.finished_batches("stage1")
    other = inventory.acquire_batch("other", count=1)  # rows of other jobs are no concern of stage 2

    step = inventory.acquire_batch("stage2", source=finished, weight=6)
    assert (step.id_range, step.count, step.weight) == ((first[0].id, first[0].id), 1, 3)
    assert [row["job"] for row in step.items] == ["stage1"]
    step.succeeded()
    assert inventory.acquire_batch("stage2", source=finished) is None  # stage 1's second range still runs
    first[1].succeeded()
    other.succeeded()
    step = inventory.acquire_batch("stage2", source=finished)  # stops before the failure, to be retried
    assert (step.id_range, step.count, step.weight) == ((first[1].id, first[2].id), 2, 6)
    step.succeeded()
    assert inventory.acquire_batch("stage2", source=finished) is None
    retry = inventory.acquire_batch("stage1")
    assert (retry.id, retry.attempt) == (first[3].id, 2)
    retry.succeeded()
    step = inventory.acquire_batch("stage2", source=finished)
    assert (step.id_range, step.count) == ((first[3].id, first[3].id), 1)
    assert {s.source_table for s in inventory.jobs()} == {db.source().label, inventory.table.fullname}


def test_source_in_another_database(db: Database, tmp_path) -> None:
    elsewhere = sa.create_engine(f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}")
    with elsewhere.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE files (file_id INTEGER PRIMARY KEY, bytes INT, path TEXT)")
        for i in range(1, 6):
            connection.exec_driver_sql("INSERT INTO files VALUES (?, ?, ?)", (i, 100 * i, f"/data/{i}"))
    elsewhere.dispose()
    source = Source("files", id_column="file_id", weight_column="bytes", url=str(elsewhere.url))
    inventory = db.inventory(source=None, sources={"copy": source})
    batch = inventory.acquire_batch("copy", weight=600)
    assert [item["path"] for item in batch.items] == ["/data/1", "/data/2", "/data/3"]
    assert batch.record.config["source"]["url"].endswith("elsewhere.sqlite3")
    with pytest.raises(ConfigurationError, match=r"No source table for job 'other'"):
        inventory.acquire_batch("other")


def test_sources_per_job_and_progress_per_source_table(db: Database) -> None:
    db.items("a")
    db.items("b", ids=range(100, 103))
    inventory = db.inventory(source=None)
    inventory.set_source("j", db.source("a"))
    assert inventory.acquire_batch("j", count=20).id_range == (0, 9)
    assert inventory.acquire_batch("j", source=db.source("b")).id_range == (100, 102)
    assert inventory.acquire_batch("j") is None
    assert [(s.job, s.source_table, s.last_id) for s in inventory.jobs()] == [
        ("j", db.source("a").label, 9), ("j", db.source("b").label, 102)
    ]  # fmt: skip


def test_table_is_created_on_first_use_with_the_acquisition_config(db: Database) -> None:
    db.items()
    inventory = db.inventory(max_attempts=4, lease=90)
    assert not inventory.exists()
    batch = inventory.acquire_batch("j", weight=8, count=9, where={"tag": "odd"}, job_identifier="run-17")
    assert inventory.exists()
    assert sa.inspect(db.engine).has_table("datapipelines_inventory", schema=db.schema)
    record = inventory.batches()[0]
    assert (record.job_identifier, record.max_attempts, record.count, record.weight) == ("run-17", 4, 2, 8)
    assert record.id_range == (1, 3)
    assert (record.lease_until - record.processing_start).total_seconds() == 90
    config = record.config
    assert (config["weight"], config["count"], config["id_min"], config["lease_seconds"]) == (8, 9, None, 90)
    assert config["source"] == {
        "table": "items", "schema": db.schema, "id_column": "id", "weight_column": "weight", "url": None
    }  # fmt: skip
    assert "'odd'" in config["where"]
    json.dumps(config)
    assert batch.status == "running"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda inv: inv.acquire_batch("j", weight=0), r"weight must be positive"),
        (lambda inv: inv.acquire_batch("j", count=-1), r"count must be positive"),
        (lambda inv: inv.acquire_batch("j", id_min=5, id_max=2), r"id_min 5 is above id_max 2"),
        (lambda inv: inv.acquire_batches("j", 0), r"n must be an int of at least 1"),
        (lambda inv: inv.acquire_batch("j", where={"colour": "red"}), r"no filter column 'colour'"),
        (lambda inv: inv.acquire_batch("j", where="tag = 'odd'"), r"A filter is a mapping.*not str"),
        (lambda inv: inv.acquire_batch("j", where=lambda table: True), r"returned True, not a SQL"),
        (lambda inv: inv.acquire_batch("j", source="missing"), r"Source table 'missing' does not exist"),
        (lambda inv: inv.acquire_batch("j", source=Source("items", id_column="pk")), r"no id column 'pk'"),
        (lambda inv: inv.acquire_batch("j", source=Source("items", weight_column="kg")), r"column 'kg'"),
        (lambda inv: inv.acquire_batch("j", source=42), r"not 42"),
    ],
)
def test_bad_settings_are_named(sqlite_db: Database, call, message) -> None:
    sqlite_db.items()
    inventory = sqlite_db.inventory()
    with pytest.raises(ConfigurationError, match=message):
        call(inventory)
    assert inventory.batches() == []


def test_bad_inventory_settings(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'x.sqlite3'}"
    with pytest.raises(ConfigurationError, match=r"max_attempts must be an int of at least 1"):
        Inventory(url, max_attempts=0)
    with pytest.raises(ConfigurationError, match=r"lease must be positive"):
        Inventory(url, lease=0)
    with pytest.raises(ConfigurationError, match=r"Not a database URL"):
        Inventory("not a url")


def test_postgres_urls_use_psycopg_3() -> None:
    assert database_url("postgresql://u:p@host/db").drivername == "postgresql+psycopg"
    assert database_url("postgres://host/db").drivername == "postgresql+psycopg"
    assert database_url("postgresql+psycopg2://host/db").drivername == "postgresql+psycopg2"
    assert database_url("sqlite:///x.db").drivername == "sqlite"


def test_plain_postgresql_url_works(postgres_db: Database) -> None:
    postgres_db.items()
    plain = postgres_db.url.replace("postgresql+psycopg://", "postgresql://")
    with Inventory(plain, schema=postgres_db.schema, source=postgres_db.source()) as inventory:
        assert inventory.url.drivername == "postgresql+psycopg"
        assert inventory.acquire_batch("j", weight=12).id_range == (0, 3)


def test_over_the_catalogue_weighted_by_size(tmp_path) -> None:
    from datapipelines.sinks.catalog import Catalog

    url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    catalog = Catalog(url)
    for n in range(1, 7):
        catalog.record(bytes, b"x" * (100 * n), query={"n": n})
    catalog.record(str, "y" * 50, query={"n": 0})
    catalog.engine.dispose()
    with Inventory(url, source=Source("catalog_records", weight_column="size")) as inventory:
        batch = inventory.acquire_batch("copy", weight=600)
        assert [item["size"] for item in batch.items] == [100, 200, 300]
        assert [item["type"] for item in batch.items] == ["builtins.bytes"] * 3
        assert batch.weight == 600
        rest = inventory.acquire_batch("copy", weight=10_000, where={"type": "builtins.bytes"})
        assert [item["size"] for item in rest.items] == [400, 500, 600]
        assert inventory.acquire_batch("copy", where={"type": "builtins.bytes"}) is None
        assert inventory.acquire_batch("copy").count == 1  # the str row, past the filtered range


# -- settings, as a pybatchintory deployment has them ------------------------------------------
@pytest.fixture
def clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.upper().startswith(("DATAPIPELINES_INVENTORY", "PYBATCHINTORY_")):
            monkeypatch.delenv(name)
    return monkeypatch


def test_configure_from_pybatchintory_environment_and_dotenv(db: Database, tmp_path, clean_environment):
    db.items()
    dotenv = tmp_path / "inventory.env"
    dotenv.write_text(
        "# moved over from pybatchintory\n"
        f"export PYBATCHINTORY_INVENTORY_CONN='{db.url}'\n"
        f"pybatchintory_meta_table_name=items\n"
        f"PYBATCHINTORY_META_CONN_SCHEMA={db.schema or ''}\n"
        f"PYBATCHINTORY_INVENTORY_CONN_SCHEMA={db.schema or ''}\n"
        "DATAPIPELINES_INVENTORY_WEIGHT_COLUMN=weight\n"
        "DATAPIPELINES_INVENTORY_MAX_ATTEMPTS=5\n"
    )
    clean_environment.setenv("PYBATCHINTORY_ENV_FILE", str(dotenv))
    clean_environment.setenv("DATAPIPELINES_INVENTORY_TABLE", "moved_inventory")
    with configure(lease_seconds=60) as inventory:
        assert (inventory.table.name, inventory.table.schema) == ("moved_inventory", db.schema)
        assert (inventory.max_attempts, inventory.lease.total_seconds()) == (5, 60)
        batch = inventory.acquire_batch("j", weight=12)
        assert batch.id_range == (0, 3)
    # The environment wins over the file, keyword arguments over both.
    clean_environment.setenv("DATAPIPELINES_INVENTORY_MAX_ATTEMPTS", "2")
    assert load_settings().max_attempts == 2
    assert load_settings(max_attempts=7).max_attempts == 7
    assert load_settings(dotenv).source_table == "items"


def test_settings_errors_are_named(tmp_path, clean_environment) -> None:
    assert load_settings() == Settings()
    with pytest.raises(ConfigurationError, match="Unknown inventory setting 'tabel'"):
        load_settings(tabel="x")
    clean_environment.setenv("DATAPIPELINES_INVENTORY_LEASE_SECONDS", "an hour")
    with pytest.raises(ConfigurationError, match="'lease_seconds' must be a number, got 'an hour'"):
        load_settings()
    clean_environment.delenv("DATAPIPELINES_INVENTORY_LEASE_SECONDS")
    with pytest.raises(ConfigurationError, match="Cannot read the dotenv file '.*missing.env'"):
        load_settings(tmp_path / "missing.env")
    binary = tmp_path / "binary.env"
    binary.write_bytes(b"\xab\xcd\xff" * 20)
    with pytest.raises(ConfigurationError, match="The dotenv file '.*binary.env' is not UTF-8 text"):
        load_settings(binary)
    bad = tmp_path / "bad.env"
    bad.write_text("URL sqlite:///x\n")
    with pytest.raises(ConfigurationError, match="line 1: expected NAME=value"):
        load_settings(bad)


# -- moving a pybatchintory inventory over ----------------------------------------------------------
def upstream_table(db: Database, old_names: bool = False) -> sa.Table:
    """pybatchintory's inventory table (its newer column names, or with ``old_names`` the first ones)."""
    prefix, result = ("meta_id", "job_result") if old_names else ("batch_id", "job_result_item")
    sized = ("weight", "count") if old_names else ("batch_weight", "batch_count")
    table = sa.Table(
        "inventory", sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("meta_table", sa.String, nullable=False), sa.Column("job", sa.String, nullable=False),
        sa.Column("job_identifier", sa.String), sa.Column(result, sa.JSON),
        sa.Column("processing_start", sa.DateTime, nullable=False), sa.Column("processing_end", sa.DateTime),
        sa.Column(f"{prefix}_start", sa.BigInteger, nullable=False),
        sa.Column(f"{prefix}_end", sa.BigInteger, nullable=False),
        sa.Column(sized[0], sa.Integer), sa.Column(sized[1], sa.Integer, nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False), sa.Column("status", sa.String, nullable=False),
        sa.Column("logging", sa.String), sa.Column("config", sa.JSON, nullable=False),
        schema=db.schema,
    )  # fmt: skip
    started = datetime(2029, 12, 31, 23, 0)
    rows = [
        (0, 3, 12, "succeeded", {"files": 4}, None),
        (4, 5, 18, "failed", None, "OSError: disk full"),
        (6, 6, 12, "running", None, None),
    ]
    with db.engine.begin() as connection:
        table.create(connection)
        connection.execute(
            table.insert(),
            [
                {"meta_table": "items", "job": "j", "job_identifier": "old-host", result: outcome,
                 "processing_start": started, f"{prefix}_start": first, f"{prefix}_end": last,
                 sized[0]: weight, sized[1]: last - first + 1, "attempt": 1, "status": status,
                 "logging": log, "config": {"batch_weight": 20}}
                for first, last, weight, status, outcome, log in rows
            ],
        )  # fmt: skip
    return table


@pytest.mark.parametrize("old_names", [False, True])
def test_import_pybatchintory_and_continue(db: Database, clock: FakeClock, old_names: bool) -> None:
    db.items()
    upstream_table(db, old_names)
    inventory = db.inventory(clock=clock, lease=3600)
    sources = {"items": db.source()}  # pybatchintory names the table alone; here it may be in a schema
    assert inventory.import_pybatchintory(schema=db.schema, sources=sources) == 3
    assert inventory.import_pybatchintory(schema=db.schema, sources=sources) == 0  # nothing new
    records = inventory.batches("j")
    assert [(r.id_range, r.status, r.weight, r.count) for r in records] == [
        ((0, 3), "succeeded", 12.0, 4), ((4, 5), "failed", 18.0, 2), ((6, 6), "running", 12.0, 1)
    ]  # fmt: skip
    assert records[0].result == {"files": 4} and records[1].log == "OSError: disk full"
    assert records[0].config["batch_weight"] == 20 and "pybatchintory:" in records[0].config["imported_from"]

    retried = inventory.acquire_batch("j")  # the failed range first, then new items after the last one
    assert (retried.id_range, retried.attempt) == ((4, 5), 2)
    assert inventory.acquire_batch("j").id_range == (7, 9)
    clock.advance(3600)  # the range running when moved over is taken over after its lease
    assert inventory.acquire_batch("j").id_range == (6, 6)


def test_import_pybatchintory_errors_and_cli(sqlite_db: Database, capsys) -> None:
    sqlite_db.items()
    inventory = sqlite_db.inventory()
    with pytest.raises(ConfigurationError, match="No pybatchintory table 'inventory' in sqlite:///"):
        inventory.import_pybatchintory()
    with pytest.raises(ConfigurationError, match="'items' in sqlite:///.* is not a pybatchintory inventory"):
        inventory.import_pybatchintory(table="items")
    upstream_table(sqlite_db)
    assert main(["inventory", "--url", sqlite_db.url, "--json", "import-pybatchintory"]) == 0
    assert json.loads(capsys.readouterr().out) == {"imported": 3}
    assert main(["inventory", "--url", sqlite_db.url, "import-pybatchintory"]) == 0
    assert capsys.readouterr().out == "0 range(s) imported from pybatchintory\n"
