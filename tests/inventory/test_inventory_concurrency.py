"""Eight processes acquiring for one job at once: disjoint ranges, no gaps, no item twice."""

from __future__ import annotations

import multiprocessing
import os
from collections import defaultdict

from datapipelines.inventory import Inventory, Source
from tests.support import inventory as support
from tests.support.inventory import Database

db = support.db

PROCESSES = 8
ITEMS = 160
FAIL_EVERY = 7  # a range starting at a multiple of this fails on its first attempt


def _work(url: str, schema: str | None, start, results) -> None:
    inventory = Inventory(
        url, schema=schema, source=Source("items", weight_column="weight", schema=schema),
        job_identifier=f"worker-{os.getpid()}",
    )  # fmt: skip
    taken = []
    try:
        start.wait()
        while (batch := inventory.acquire_batch("shared", weight=7)) is not None:
            fail = batch.attempt == 1 and batch.id_start % FAIL_EVERY == 0
            item_ids = [item["id"] for item in batch.items]
            if fail:
                batch.failed("planned failure")
            else:
                batch.succeeded(len(item_ids))
            taken.append((os.getpid(), batch.id, batch.id_range, batch.attempt, fail, item_ids))
    finally:
        inventory.close()
        results.put(taken)


def test_processes_take_disjoint_ranges_without_gaps(db: Database) -> None:
    db.items(ids=range(ITEMS), weight=lambda i: i % 5 + 1)
    context = multiprocessing.get_context("fork")
    start, results = context.Event(), context.Queue()
    # The inventory table does not exist yet: the processes also race to create it.
    arguments = (db.url, db.schema, start, results)
    workers = [context.Process(target=_work, args=arguments) for _ in range(PROCESSES)]
    for worker in workers:
        worker.start()
    start.set()
    taken = [entry for _ in workers for entry in results.get(timeout=120)]
    for worker in workers:
        worker.join(timeout=30)
        assert worker.exitcode == 0

    by_row = defaultdict(list)
    for pid, row, id_range, attempt, fail, item_ids in taken:
        by_row[row].append((attempt, id_range, fail, item_ids, pid))
    ranges = []
    for attempts in by_row.values():
        attempts.sort()
        assert [a[0] for a in attempts] == list(range(1, len(attempts) + 1))  # each attempt once
        assert len({(a[1], tuple(a[3])) for a in attempts}) == 1  # a retry is the same range
        assert [a[2] for a in attempts] == [True] * (len(attempts) - 1) + [False]
        ranges.append((attempts[0][1], attempts[0][3]))
    ranges.sort()
    assert ranges[0][0][0] == 0 and ranges[-1][0][1] == ITEMS - 1
    for (previous, _), (following, _) in zip(ranges, ranges[1:], strict=False):
        assert following[0] == previous[1] + 1  # contiguous: no gap, no overlap
    assert [i for _, item_ids in ranges for i in item_ids] == list(range(ITEMS))
    assert any(len(attempts) == 2 for attempts in by_row.values())  # retries happened
    assert len({pid for pid, *_ in taken}) > 1  # the work was shared

    inventory = db.inventory()
    records = inventory.batches("shared")
    assert sorted(r.id for r in records) == sorted(by_row)
    assert {r.status for r in records} == {"succeeded"}
    assert sum(r.count for r in records) == ITEMS
