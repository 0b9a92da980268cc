"""``datapipelines audit``: inspect, export, verify and clean an audit recorder directory.

    datapipelines audit --dir audit sessions
    datapipelines audit --dir audit show <request-id-prefix>
    datapipelines audit --dir audit export <session> <directory>
    datapipelines audit --dir audit verify
    datapipelines audit --dir audit gc [--min-age SECONDS]

Tables by default; ``--json`` prints one JSON document for scripts.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import sys
from collections.abc import Callable
from typing import Any

from .arguments import non_negative
from .output import print_json, printable, table

DEFAULT_DIR = os.environ.get("DATAPIPELINES_AUDIT_DIR", "audit")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="inspect and maintain an audit recorder directory",
        epilog="With --json each command prints one JSON document: sessions a list of "
        "{id, name, meta, started_at, ended_at, pid, host, implicit, responses, errors, damaged, bytes}; "
        "show {id, source, method, target, params, headers, body_sha256, first_seen, as_of_bucket, "
        "cache_tag, responses: [...]}; export {session, name, requests, responses, directory}; "
        "verify {ok, missing, damaged}; gc {removed}. Times are Unix seconds. See docs/audit.md.",
    )
    parser.add_argument(
        "--dir",
        default=DEFAULT_DIR,
        help="the recorder directory (default: $DATAPIPELINES_AUDIT_DIR or ./audit)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    commands.add_parser(
        "sessions",
        help="list sessions with their response, error and damaged-blob counts",
        description="One row per session: responses recorded, error answers among them, responses "
        "whose blob replay found damaged (moved aside, fetched again by a live pipeline; "
        "'audit verify' checks every blob), and bytes.",
    ).set_defaults(func=_guarded(_sessions))
    show = commands.add_parser(
        "show", help="a request (with its as_of_bucket / cache_tag partitions) and every response to it"
    )
    show.add_argument("request_id", help="a request id or a unique prefix of at least 6 characters")
    show.add_argument("--payload", action="store_true", help="write the newest payload's bytes to stdout")
    show.set_defaults(func=_guarded(_show))
    export = commands.add_parser("export", help="copy one session into a new, replayable recorder directory")
    export.add_argument("session", help="a session id, unique id prefix, or name (the newest of that name)")
    export.add_argument("directory")
    export.set_defaults(func=_guarded(_export))
    commands.add_parser(
        "verify", help="recompute every blob's sha256; exit 1 if any is missing or damaged"
    ).set_defaults(func=_guarded(_verify))
    gc = commands.add_parser("gc", help="delete blobs no record references")
    gc.add_argument(
        "--min-age",
        type=non_negative(float),
        default=60.0,
        help="only blobs untouched for this many seconds (default 60), so running recorders are safe",
    )
    gc.set_defaults(func=_guarded(_gc))


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``command``, reporting a row it cannot show (a tampered database) as one error naming the file."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        from datapipelines.errors import DataPipelinesError
        from datapipelines.sinks.audit import DATABASE, AuditStoreError

        try:
            return command(args)
        except DataPipelinesError:
            raise
        except (TypeError, ValueError, OverflowError) as error:
            raise AuditStoreError(
                f"Audit database {os.path.join(args.dir, DATABASE)}: a row is not as the recorder writes it "
                f"({type(error).__name__}: {error})"
            ) from error

    return run


def _recorder(args: argparse.Namespace) -> Any:
    from datapipelines.errors import ConfigurationError
    from datapipelines.sinks.audit import DATABASE, AuditRecorder

    if not os.path.isfile(os.path.join(args.dir, DATABASE)):
        raise ConfigurationError(f"{args.dir!r} is not an audit recorder directory (no {DATABASE})")
    return AuditRecorder(args.dir)


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _sessions(args: argparse.Namespace) -> int:
    sessions = _recorder(args).sessions()
    if args.json:
        print_json(sessions)
        return 0
    rows = [
        (
            s["id"][:12],
            s["name"],
            when(s["started_at"]),
            when(s["ended_at"]),
            s["responses"],
            s["errors"],
            s["damaged"],
            s["bytes"],
        )
        for s in sessions
    ]
    print(table(("session", "name", "started", "ended", "responses", "errors", "damaged", "bytes"), rows))
    return 0


def _show(args: argparse.Namespace) -> int:
    recorder = _recorder(args)
    history = recorder.request_history(args.request_id)
    if args.payload:
        if not history["responses"]:
            return 1
        sys.stdout.buffer.write(recorder.blobs.read(history["responses"][-1]["sha256"]))
        return 0
    if args.json:
        print_json(history)
        return 0
    params = "&".join(f"{k}={v}" for k, v in history["params"])
    print(f"request  {printable(history['id'])}")
    print(f"source   {printable(history['source'])}")
    print(printable(f"call     {history['method']} {history['target']}{'?' + params if params else ''}"))
    partitions = [f"{name}={history[name]}" for name in ("as_of_bucket", "cache_tag") if history[name]]
    if partitions:
        print(printable(f"recorded apart by {' '.join(partitions)} (never sent)"))
    if history["headers"]:
        print(f"headers  {json.dumps(history['headers'], sort_keys=True)}")
    if history["body_sha256"]:
        print(f"body     blob {printable(history['body_sha256'])}")
    print()
    rows = [
        (
            when(r["fetched_at"]),
            r["session_id"][:12] if r["session_id"] else None,
            r["status"],
            r["content_type"],
            r["size"],
            f"{r['elapsed'] * 1000:.1f}",
            r["attempts"],
            r["sha256"][:16],
        )
        for r in history["responses"]
    ]
    print(table(("fetched", "session", "status", "content type", "bytes", "ms", "attempts", "sha256"), rows))
    return 0


def _export(args: argparse.Namespace) -> int:
    result = _recorder(args).export(args.session, args.directory)
    if args.json:
        print_json(result)
    else:
        print(
            printable(
                f"exported session {result['session'][:12]} ({result['name']}): {result['requests']} "
                f"requests, {result['responses']} responses -> {result['directory']}"
            )
        )
    return 0


def _verify(args: argparse.Namespace) -> int:
    report = _recorder(args).verify()
    bad = report["missing"] + report["damaged"]
    if args.json:
        print_json({"ok": len(report["ok"]), "missing": report["missing"], "damaged": report["damaged"]})
    else:
        ok, missing, damaged = (len(report[k]) for k in ("ok", "missing", "damaged"))
        print(f"{ok} blobs ok, {missing} missing, {damaged} damaged")
        if bad:
            rows = [(sha, "missing") for sha in report["missing"]] + [
                (sha, "damaged") for sha in report["damaged"]
            ]
            print(table(("sha256", "problem"), rows))
    return 1 if bad else 0


def _gc(args: argparse.Namespace) -> int:
    removed = _recorder(args).gc(min_age=args.min_age)
    if args.json:
        print_json({"removed": removed})
    else:
        print(f"removed {len(removed)} unreferenced blob file(s)")
    return 0


def summary_text(recorder: Any, session_id: str) -> str:
    """A readable summary of one session: what was fetched, how it went, where the bytes are."""
    summary = recorder.summary(session_id)
    rows = [
        (
            row["source"],
            row["status"],
            row["requests"],
            row["responses"],
            row["bytes"],
            f"{(row['elapsed'] or 0) * 1000:.1f}",
            row["blobs"],
        )
        for row in summary["by_status"]
    ]
    head = (
        f"session {summary['id'][:12]} {summary['name']!r}: {when(summary['started_at'])} -> "
        f"{when(summary['ended_at'])}, {summary['responses']} responses, {summary['errors']} errors, "
        f"{summary['bytes']} bytes recorded in {recorder.directory}"
    )
    return head + "\n" + table(("source", "status", "requests", "responses", "bytes", "ms", "blobs"), rows)
