"""``datapipelines catalog``: build a catalogue from metadata files, sync a local state, query both.

    datapipelines catalog --catalog meta/catalog.db generate ./metadata --require document_type
    datapipelines catalog --catalog meta/catalog.db --state state.db update
    datapipelines catalog --catalog meta/catalog.db --state state.db inspect
    datapipelines catalog --state state.db find document_type=contract imported=false
    datapipelines catalog --catalog meta/catalog.db changes --since 2024-05-01
    datapipelines catalog --catalog meta/catalog.db --remote url=https://host/{name} dump

URLs default to $DATAPIPELINES_CATALOG and $DATAPIPELINES_STATE (the last line
uses the former); a bare path is a SQLite file. ``find`` asks the local state
when one is given, else the catalogue. Tables by default; ``--json`` prints one JSON document for scripts.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ConfigurationError
from ..progress import Progress
from .arguments import non_negative
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
    parser.add_argument(
        "--remote",
        action="append",
        default=[],
        metavar="NAME=TEMPLATE",
        help="a remote location template filled from each record's fields, e.g. url=https://host/{name}",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    generate = commands.add_parser(
        "generate", help="add and update records from JSON metadata files; exit 1 if any file is invalid"
    )
    generate.add_argument("folder", help="the folder searched for *.json files, recursively")
    generate.add_argument(
        "--key", default=None, help="the unique key field (default: id, or file_path with --no-meta)"
    )
    generate.add_argument(
        "--require", action="append", default=[], metavar="FIELD", help="a field every file must have"
    )
    generate.add_argument("--type", default="document", help="the record type (default: document)")
    generate.add_argument(
        "--retrieved-field", default="retrieved_at", help="the ISO 8601 date field (default: retrieved_at)"
    )
    gone = generate.add_mutually_exclusive_group()
    gone.add_argument("--prune", action="store_true", help="remove records of this type whose file is gone")
    gone.add_argument(
        "--ensure", action="store_true", help="soft-delete (meta-missing) records whose metadata file is gone"
    )
    generate.add_argument(
        "--ensure-files",
        action="store_true",
        help="soft-delete (original-missing) records whose actual file, named by --file-field, is gone",
    )
    generate.add_argument("--file-field", default="file_name", help="the field naming the actual file")
    generate.add_argument(
        "--files-root", default=None, help="the folder of the actual files (default: FOLDER)"
    )
    generate.add_argument(
        "--no-meta", action="store_true", help="catalogue every file itself, without JSON metadata files"
    )
    generate.set_defaults(func=_generate)

    update = commands.add_parser("update", help="merge the catalogue into the local state")
    update.add_argument("--reason", default=None, help="why records missing from the catalogue are deleted")
    update.set_defaults(func=_update)

    commands.add_parser(
        "inspect", help="record counts, sizes, deletions per reason and the key-value store"
    ).set_defaults(func=_inspect)

    dump = commands.add_parser("dump", help="matching records as JSON lines: columns, fields, remote")
    dump.add_argument("filters", nargs="*", metavar="NAME=VALUE")
    dump.add_argument("--include-deleted", action="store_true", help="include soft-deleted records")
    dump.set_defaults(func=_dump)

    changed = commands.add_parser("changes", help="the catalogue's change log: what changed per record")
    changed.add_argument("--since", default=None, help="only changes at or after this ISO 8601 time")
    changed.add_argument("--key", default=None, help="only this record's changes")
    changed.set_defaults(func=_changes)

    squash = commands.add_parser("squash", help="fold the change log into one entry per record")
    squash.add_argument("--before", default=None, help="only entries older than this ISO 8601 time")
    squash.set_defaults(func=_squash)

    find = commands.add_parser(
        "find",
        help="records matching NAME=VALUE filters (JSON values, else text); NAME_after=DATE is "
        "inclusive, NAME_before=DATE exclusive",
    )
    find.add_argument("filters", nargs="*", metavar="NAME=VALUE")
    find.add_argument("--limit", type=non_negative(int), default=None, help="at most this many records")
    find.add_argument("--include-deleted", action="store_true", help="include soft-deleted records")
    find.add_argument("--count", action="store_true", help="print only how many records match")
    find.add_argument(
        "--columns", default=None, help="comma-separated columns (default: id,type,query,retrieved_at,fields)"
    )
    find.set_defaults(func=_find)


# -- opening ------------------------------------------------------------------------
def _existing(url: str, what: str, option: str, creator: str) -> None:
    """Refuse a SQLite file that is not there: a typo'd path is not an empty catalogue.

    (An empty catalogue would make ``update`` soft-delete every local record.)
    """
    from datapipelines.sinks.catalog._db import sqlite_file

    file = sqlite_file(url)
    if file is not None and not file.exists():
        raise ConfigurationError(f"No {what} at {str(file)!r} ({option}); `{creator}` creates one")


def _catalog(args: argparse.Namespace) -> Any:
    from datapipelines.sinks.catalog import Catalog

    if not args.catalog:
        raise ConfigurationError("No catalogue given: pass --catalog URL or set DATAPIPELINES_CATALOG")
    if args.command != "generate":
        _existing(args.catalog, "catalogue", "--catalog", "datapipelines catalog generate")
    remote = {}
    for item in args.remote:
        name, equals, template = item.partition("=")
        if not equals or not name:
            raise ConfigurationError(f"--remote takes NAME=TEMPLATE; got {item!r}")
        remote[name] = template
    return Catalog(args.catalog, prefix=args.catalog_prefix, remote=remote)


def _state(args: argparse.Namespace, required: bool) -> Any:
    from datapipelines.sinks.catalog import LocalState

    if not args.state:
        if required:
            raise ConfigurationError("No local state given: pass --state URL or set DATAPIPELINES_STATE")
        return None
    catalog = _catalog(args)
    if args.command != "update":
        _existing(args.state, "local state", "--state", "datapipelines catalog update")
    return LocalState(catalog, args.state, prefix=args.state_prefix)


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
            ensure=args.ensure,
            ensure_files=args.ensure_files,
            file_field=args.file_field,
            files_root=args.files_root,
            no_meta=args.no_meta,
            progress=bar.update,
        )
    _print_counts(args, counts, ("added", "updated", "skipped", "deleted", "restored", "invalid"))
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
    print(
        f"catalogue {report['url']}: {report['records']} records, {report['deleted']} deleted, "
        f"{report['changes']} change log entries"
    )
    rows = [(name, t["records"], t["bytes"], cell(t["last_updated"])) for name, t in report["types"].items()]
    if rows:
        print(table(("type", "records", "bytes", "last updated"), rows))
    _print_reasons(report["deleted_reasons"])
    _print_store(report["store"])
    if state is not None:
        local = summary["state"]
        print()
        print(
            f"local state {local['url']}: {local['records']} records, {local['deleted']} deleted, "
            f"{local['changed_locally']} changed locally"
        )
        _print_reasons(local["deleted_reasons"])
        _print_store(local["store"])
    return 0


def _find(args: argparse.Namespace) -> int:
    state = _state(args, required=False)
    filters = {**parse_filters(args.filters), "include_deleted": args.include_deleted}
    target = state if state is not None else _catalog(args)
    if args.count:
        count = target.count(**filters)
        print(json.dumps({"count": count}) if args.json else count)
        return 0
    found = list(target.find(limit=args.limit, **filters))
    if args.json:
        print_json([record.as_dict() for record in found])
        return 0
    records = [dict(record) for record in found]
    if args.columns:
        columns = [name.strip() for name in args.columns.split(",") if name.strip()]
    else:
        from datapipelines.sinks.catalog.records import CORE_COLUMNS

        extra = {name for record in records for name in record} - set(CORE_COLUMNS)
        columns = [*_DEFAULT_COLUMNS, *sorted(extra)]
    print(table(columns, [[cell(record.get(name)) for name in columns] for record in records]))
    print(f"({len(records)} records)")
    return 0


def _dump(args: argparse.Namespace) -> int:
    state = _state(args, required=False)
    target = state if state is not None else _catalog(args)
    target.dump(sys.stdout, include_deleted=args.include_deleted, **parse_filters(args.filters))
    return 0


def _changes(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    entries = catalog.changes(_moment("--since", args.since), key=args.key)
    if args.json:
        print_json([dataclasses.asdict(change) for change in entries])
        return 0
    rows = [
        (cell(c.changed_at), c.action, c.type, c.key, ",".join(c.columns) or "-", ",".join(c.fields) or "-")
        for c in entries
    ]
    print(table(("changed at", "action", "type", "key", "columns", "fields"), rows))
    print(f"({len(rows)} changes)")
    return 0


def _squash(args: argparse.Namespace) -> int:
    removed = _catalog(args).squash(_moment("--before", args.before))
    if args.json:
        print_json({"removed": removed})
    else:
        print(f"{removed} change log entries folded away")
    return 0


def _moment(option: str, text: str | None) -> datetime.datetime | None:
    from datapipelines.sinks.catalog.records import as_datetime

    return None if text is None else as_datetime(option, text)


# -- input and output ---------------------------------------------------------------------
def parse_filters(items: Sequence[str]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs: JSON values (``true``, ``3``, ``null``, ``{"id": 1}``), else text.

    Values of ``*_after`` and ``*_before`` filters stay text, exactly as the
    Python API takes them: ISO 8601 dates on date columns, compared as text on
    fields, so ``published_at_after=2019-04-12`` includes that day.
    """
    filters: dict[str, Any] = {}
    for item in items:
        name, equals, text = item.partition("=")
        if not equals or not name:
            raise ConfigurationError(f"Filters are NAME=VALUE; got {item!r}")
        if name.endswith(("_after", "_before")):
            filters[name] = text
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


def _print_reasons(reasons: Mapping[str, int]) -> None:
    if reasons:
        print(table(("deleted reason", "records"), list(reasons.items())))


def _print_store(store: Mapping[str, Any]) -> None:
    if store:
        print(
            table(("store key", "value", "type"), [(k, cell(v), type(v).__name__) for k, v in store.items()])
        )
