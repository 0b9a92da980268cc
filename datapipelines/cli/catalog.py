"""``datapipelines catalog``: build a catalogue from metadata files, sync a local state, query both.

    datapipelines catalog --catalog meta/catalog.db generate ./metadata --require document_type
    datapipelines catalog --catalog meta/catalog.db --state state.db update
    datapipelines catalog --catalog meta/catalog.db --state state.db inspect
    datapipelines catalog --state state.db find document_type=contract imported=false

URLs default to $DATAPIPELINES_CATALOG and $DATAPIPELINES_STATE (the last line
uses the former); a bare path is a SQLite file. ``find`` asks the local state
when one is given, else the catalogue. Tables by default; ``--json`` prints one JSON document for scripts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError
from ..progress import Progress
from .output import print_json, table

_CELL = 40
_DEFAULT_COLUMNS = ("id", "type", "query", "retrieved_at")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("catalog", help="build, sync and query a catalogue of collected items")
    parser.add_argument(
        "--catalog",
        default=os.environ.get("DATAPIPELINES_CATALOG"),
        help="catalogue URL or SQLite path (default: $DATAPIPELINES_CATALOG)",
    )
    parser.add_argument(
        "--state",
        default=os.environ.get("DATAPIPELINES_STATE"),
        help="local state URL or SQLite path (default: $DATAPIPELINES_STATE)",
    )
    parser.add_argument("--catalog-prefix", default="catalog", help="table prefix of the catalogue")
    parser.add_argument("--state-prefix", default="state", help="table prefix of the local state")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    generate = commands.add_parser(
        "generate", help="add and update records from JSON metadata files; exit 1 if any file is invalid"
    )
    generate.add_argument("folder", help="the folder searched for *.json files, recursively")
    generate.add_argument("--key", default="id", help="the unique key field (default: id)")
    generate.add_argument(
        "--require", action="append", default=[], metavar="FIELD", help="a field every file must have"
    )
    generate.add_argument("--type", default="document", help="the record type (default: document)")
    generate.add_argument(
        "--retrieved-field", default="retrieved_at", help="the ISO 8601 date field (default: retrieved_at)"
    )
    generate.add_argument(
        "--prune", action="store_true", help="remove records of this type whose file is gone"
    )
    generate.set_defaults(func=_generate)

    update = commands.add_parser("update", help="merge the catalogue into the local state")
    update.add_argument("--reason", default=None, help="why records missing from the catalogue are deleted")
    update.set_defaults(func=_update)

    commands.add_parser("inspect", help="record counts, sizes and the key-value store").set_defaults(
        func=_inspect
    )

    find = commands.add_parser("find", help="records matching NAME=VALUE filters (JSON values, else text)")
    find.add_argument("filters", nargs="*", metavar="NAME=VALUE")
    find.add_argument("--limit", type=int, default=None, help="at most this many records")
    find.add_argument("--include-deleted", action="store_true", help="include soft-deleted records")
    find.add_argument("--count", action="store_true", help="print only how many records match")
    find.add_argument(
        "--columns", default=None, help="comma-separated columns (default: id,type,query,retrieved_at,fields)"
    )
    find.set_defaults(func=_find)


# -- opening ------------------------------------------------------------------------
def _catalog(args: argparse.Namespace) -> Any:
    from datapipelines.sinks.catalog import Catalog

    if not args.catalog:
        raise ConfigurationError("No catalogue given: pass --catalog URL or set DATAPIPELINES_CATALOG")
    return Catalog(args.catalog, prefix=args.catalog_prefix)


def _state(args: argparse.Namespace, required: bool) -> Any:
    from datapipelines.sinks.catalog import LocalState

    if not args.state:
        if required:
            raise ConfigurationError("No local state given: pass --state URL or set DATAPIPELINES_STATE")
        return None
    return LocalState(_catalog(args), args.state, prefix=args.state_prefix)


# -- commands -----------------------------------------------------------------------
def _generate(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    with Progress("generate") as bar:
        counts = catalog.generate(
            args.folder,
            key=args.key,
            required=args.require,
            type=args.type,
            retrieved_field=args.retrieved_field,
            prune=args.prune,
            progress=bar.update,
        )
    _print_counts(args, counts, ("added", "updated", "skipped", "deleted", "invalid"))
    if counts.invalid_files and not args.json:
        print()
        print(table(("invalid file", "reason"), sorted(counts.invalid_files.items())))
    return 1 if counts.invalid_files else 0


def _update(args: argparse.Namespace) -> int:
    state = _state(args, required=True)
    options = {} if args.reason is None else {"reason": args.reason}
    with Progress("update") as bar:
        counts = state.update(progress=bar.update, **options)
    _print_counts(args, counts, ("added", "updated", "skipped", "deleted", "restored"))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    state = _state(args, required=False)
    summary = {"catalog": catalog.summary(), "state": None if state is None else state.summary()}
    if args.json:
        print_json(summary)
        return 0
    report = summary["catalog"]
    print(f"catalogue {report['url']}: {report['records']} records")
    rows = [(name, t["records"], t["bytes"], cell(t["last_updated"])) for name, t in report["types"].items()]
    if rows:
        print(table(("type", "records", "bytes", "last updated"), rows))
    _print_store(report["store"])
    if state is not None:
        local = summary["state"]
        print()
        print(
            f"local state {local['url']}: {local['records']} records, {local['deleted']} deleted, "
            f"{local['changed_locally']} changed locally"
        )
        _print_store(local["store"])
    return 0


def _find(args: argparse.Namespace) -> int:
    state = _state(args, required=False)
    filters = parse_filters(args.filters)
    if state is not None:
        filters["include_deleted"] = args.include_deleted
    target = state if state is not None else _catalog(args)
    if args.count:
        count = target.count(**filters)
        print(json.dumps({"count": count}) if args.json else count)
        return 0
    records = [dict(record) for record in target.find(limit=args.limit, **filters)]
    if args.json:
        print_json(records)
        return 0
    if args.columns:
        columns = [name.strip() for name in args.columns.split(",") if name.strip()]
    else:
        from datapipelines.sinks.catalog.records import CORE_COLUMNS

        extra = {name for record in records for name in record} - set(CORE_COLUMNS)
        columns = [*_DEFAULT_COLUMNS, *sorted(extra)]
    print(table(columns, [[cell(record.get(name)) for name in columns] for record in records]))
    print(f"({len(records)} records)")
    return 0


# -- input and output ---------------------------------------------------------------------
def parse_filters(items: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs: JSON values (``true``, ``3``, ``null``, ``{"id": 1}``), else text.

    Values of ``*_after`` and ``*_before`` filters are ISO 8601 dates.
    """
    filters: dict[str, Any] = {}
    for item in items:
        name, equals, text = item.partition("=")
        if not equals or not name:
            raise ConfigurationError(f"Filters are NAME=VALUE; got {item!r}")
        if name.endswith(("_after", "_before")):
            try:
                when = datetime.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
            except ValueError:
                raise ConfigurationError(f"Filter {name!r} needs an ISO 8601 date, got {text!r}") from None
            filters[name] = when if when.tzinfo else when.replace(tzinfo=datetime.timezone.utc)
            continue
        try:
            filters[name] = json.loads(text)
        except ValueError:
            filters[name] = text
    return filters


def cell(value: Any) -> str:
    """A value as a short table cell."""
    if value is None:
        return "-"
    if isinstance(value, datetime.datetime):
        text = value.isoformat(sep=" ", timespec="seconds")
    elif isinstance(value, (Mapping, list)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text if len(text) <= _CELL else text[: _CELL - 1] + "…"




def _print_counts(args: argparse.Namespace, counts: Any, names: Sequence[str]) -> None:
    values = counts.as_dict()
    if args.json:
        print_json(values)
    else:
        print(table(names, [[values[name] for name in names]]))


def _print_store(store: Mapping[str, Any]) -> None:
    if store:
        print(
            table(("store key", "value", "type"), [(k, cell(v), type(v).__name__) for k, v in store.items()])
        )



