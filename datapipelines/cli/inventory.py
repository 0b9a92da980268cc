"""``datapipelines inventory``: what each job took from its source table, and what became of it.

    datapipelines inventory --url sqlite:///inventory.sqlite3 status
    datapipelines inventory list [--job JOB] [--status failed] [--limit 50] [--log]
    datapipelines inventory retry [--job JOB] [--id ROW ...]
    datapipelines inventory import-pybatchintory [--from-url URL] [--from-table inventory]

Tables by default; ``--json`` prints one JSON document for scripts.
"""

from __future__ import annotations

import argparse
import dataclasses
from datetime import datetime
from typing import Any

from .arguments import non_negative
from .output import print_json, printable, table


def register(subparsers: Any) -> None:
    from ..inventory import DEFAULT_TABLE, STATUSES, URL_ENVIRONMENT

    parser = subparsers.add_parser("inventory", help="show and retry the ranges jobs took from source tables")
    parser.add_argument(
        "--url",
        help=f"the inventory database (default: ${URL_ENVIRONMENT}, $PYBATCHINTORY_INVENTORY_CONN, "
        "the dotenv file in $DATAPIPELINES_INVENTORY_ENV_FILE, or a SQLite file in this folder)",
    )
    parser.add_argument(
        "--table", help=f"the inventory table (default: $DATAPIPELINES_INVENTORY_TABLE or {DEFAULT_TABLE})"
    )
    parser.add_argument("--schema", help="the database schema of the table (PostgreSQL)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    status = commands.add_parser("status", help="one line per job: ranges, attempts, failures")
    status.set_defaults(func=_status)
    listing = commands.add_parser("list", help="the ranges jobs took, oldest first")
    listing.add_argument("--job", help="only this job")
    listing.add_argument("--status", choices=STATUSES, help="only ranges with this status")
    listing.add_argument(
        "--limit", type=non_negative(int), default=50, help="the newest N ranges (default 50, 0 for all)"
    )
    listing.add_argument("--log", action="store_true", help="print each failed range's log below the table")
    listing.set_defaults(func=_list)
    retry = commands.add_parser("retry", help="give failed ranges that used up their attempts one more")
    retry.add_argument("--job", help="only this job's ranges")
    retry.add_argument("--id", type=int, action="append", dest="ids", metavar="ROW", help="only this row")
    retry.set_defaults(func=_retry)
    moved = commands.add_parser(
        "import-pybatchintory", help="copy a pybatchintory inventory's ranges in, so its jobs continue"
    )
    moved.add_argument("--from-url", help="pybatchintory's database (default: the inventory's)")
    moved.add_argument("--from-table", default="inventory", help="pybatchintory's table (inventory)")
    moved.add_argument("--from-schema", help="pybatchintory's schema (PostgreSQL)")
    moved.set_defaults(func=_import)


def _inventory(args: argparse.Namespace, *, create: bool = False) -> Any:
    from ..errors import ConfigurationError
    from ..inventory import configure

    given = {"url": args.url, "table": args.table, "schema": args.schema}
    inventory = configure(**{name: value for name, value in given.items() if value is not None})
    if not create and not inventory.exists():
        inventory.close()
        where = inventory.url.render_as_string(hide_password=True)
        raise ConfigurationError(f"No inventory table {inventory.table.fullname!r} in {where}")
    return inventory


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _number(value: Any) -> Any:
    """Weights are stored as floats; show whole ones as ints."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _status(args: argparse.Namespace) -> int:
    inventory = _inventory(args)
    try:
        jobs = inventory.jobs()
    finally:
        inventory.close()
    if args.json:
        print_json([dataclasses.asdict(job) for job in jobs])
        return 0
    headers = ("job", "source", "ranges", "running", "succeeded", "failed", "exhausted", "expired",
               "last id", "items done", "weight done", "max attempt")  # fmt: skip
    rows = [
        (j.job, j.source_table, j.batches, j.running, j.succeeded, j.failed, j.exhausted, j.expired,
         j.last_id, j.items, _number(j.weight), j.max_attempt)
        for j in jobs
    ]  # fmt: skip
    print(table(headers, rows) if rows else "no ranges taken yet")
    return 0


def _list(args: argparse.Namespace) -> int:
    inventory = _inventory(args)
    try:
        records = inventory.batches(args.job, status=args.status, limit=args.limit or None)
        now = inventory.now()
    finally:
        inventory.close()
    if args.json:
        print_json([dataclasses.asdict(r) | {"expired": r.expired(now)} for r in records])
        return 0
    headers = ("row", "job", "kind", "ids", "count", "weight", "attempt", "status", "started", "ended", "by")
    rows = [
        (r.id, r.job, "backfill" if r.backfill else "new", f"{r.id_start}..{r.id_end}", r.count,
         _number(r.weight), f"{r.attempt}/{r.max_attempts}", "expired" if r.expired(now) else r.status,
         _when(r.processing_start), _when(r.processing_end), r.job_identifier)
        for r in records
    ]  # fmt: skip
    print(table(headers, rows) if rows else "no ranges")
    if args.log:
        for r in records:
            if r.log:
                # Job names and failure texts come from anyone's code: escaped line by line.
                print()
                print(printable(f"-- row {r.id} ({r.job}, ids {r.id_start}..{r.id_end}) --"))
                print("\n".join(printable(line) for line in r.log.rstrip().split("\n")))
    return 0


def _retry(args: argparse.Namespace) -> int:
    with _inventory(args) as inventory:
        retried = inventory.retry(args.job, ids=args.ids)
    _report(args, "retried", retried, f"{retried} failed range(s) get one more attempt")
    return 0


def _import(args: argparse.Namespace) -> int:
    with _inventory(args, create=True) as inventory:
        imported = inventory.import_pybatchintory(
            args.from_url, table=args.from_table, schema=args.from_schema
        )
    _report(args, "imported", imported, f"{imported} range(s) imported from pybatchintory")
    return 0


def _report(args: argparse.Namespace, name: str, count: int, text: str) -> None:
    if args.json:
        print_json({name: count})
    else:
        print(text)
