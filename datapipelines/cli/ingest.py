"""``datapipelines ingest``: run an ingest from a TOML file, watch its counters, retry what it kept.

datapipelines ingest run CONFIG [--until-idle]
datapipelines ingest status CONFIG [--watch SECONDS] [--json]
datapipelines ingest retry CONFIG [--step NAME] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from .output import print_json, table


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ingest", help="watch a folder and route, process and archive its files")
    commands = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    run = commands.add_parser("run", help="run the ingest a TOML file describes until SIGTERM or Ctrl-C")
    run.add_argument("config", help="the ingest's TOML file")
    run.add_argument(
        "--until-idle", action="store_true", help="stop once every file present has been handled"
    )
    run.add_argument("--timeout", type=float, default=600.0, help="with --until-idle: give up after SECONDS")
    run.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    run.set_defaults(func=_run)
    status = commands.add_parser("status", help="the counters of a running (or the last) ingest")
    status.add_argument("config", help="the ingest's TOML file")
    status.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)
    retry = commands.add_parser("retry", help="put files a failure policy kept back into the watched folder")
    retry.add_argument("config", help="the ingest's TOML file")
    retry.add_argument("--step", help="only the files this step (or the router) kept")
    retry.add_argument("--dry-run", action="store_true", help="list them, move nothing")
    retry.set_defaults(func=_retry)


def _run(args: argparse.Namespace) -> int:
    from ..ingest.config import load_config

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    ingest = load_config(args.config).build()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        ingest.start()
        if args.until_idle:
            idle = ingest.wait_idle(args.timeout, settle=0.5)
            if not idle:
                print(f"datapipelines: ingest still busy after {args.timeout} s", file=sys.stderr)
        else:
            stop.wait()
    finally:
        ingest.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_report(ingest.report())
    return 0 if not args.until_idle or idle else 1


def _status_path(config: str) -> str:
    from ..ingest.config import load_config
    from ..ingest.engine import STATUS_FILE

    return os.path.join(load_config(config).listener.work, STATUS_FILE)


def _status(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..ingest.files import process_alive

    path = _status_path(args.config)
    while True:
        try:
            with open(path, encoding="utf-8") as handle:
                status = json.load(handle)
        except FileNotFoundError:
            raise ConfigurationError(f"No ingest status at {path}: has this ingest run yet?") from None
        if args.json:
            print_json(status)
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            age = time.time() - status["time"]
            alive = process_alive(status["pid"])
            state = "running" if alive else "not running"
            print(f"ingest pid {status['pid']} ({state}), status written {age:.1f} s ago")
            print_report(status["ingest"])
        if not args.watch:
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


_LISTENER_COLUMNS = ("received", "claimed", "ignored", "overflows", "rescans", "paused")
_STEP_COLUMNS = (
    "received",
    "processed",
    "succeeded",
    "failed",
    "retried",
    "dead",
    "no_match",
    "reprocessed",
    "p50_ms",
    "p99_ms",
)


def print_report(report: dict[str, Any]) -> None:
    listeners = [
        [name, *(entry.get(c) for c in _LISTENER_COLUMNS)] for name, entry in report["listeners"].items()
    ]
    print(table(["listener", *_LISTENER_COLUMNS], listeners))
    print()
    steps = []
    for name, entry in report["steps"].items():
        if "archived" in entry:
            entry = {
                "received": entry["archived"],
                "processed": entry["archived"],
                "succeeded": entry["archived"],
                "failed": entry["failed"],
            }
        elif "routed_files" in entry:
            entry = {
                "received": entry["routed_files"],
                "processed": entry["routed_files"],
                "no_match": entry["no_match"],
            }
        steps.append([name, *(entry.get(c) for c in _STEP_COLUMNS)])
    print(table(["step", *_STEP_COLUMNS], steps))
    print()
    print(f"in flight: {report['in_flight']}   oldest pending: {report['oldest_pending_age_s'] or 0} s")


def printable(name: str) -> str:
    """A file name safe to print: undecodable bytes and control characters as escapes."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _retry(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..ingest.config import load_config
    from ..ingest.files import TAGS_SUFFIX, split_work_name
    from ..ingest.policies import FailurePolicy
    from ..ingest.router import Router
    from ..ingest.step import Step

    config = load_config(args.config)
    folders: dict[str, str] = {}
    for target in [config.router, *config.targets.values()]:
        policy: FailurePolicy | None
        if isinstance(target, Step):
            policy = target.failure_policy(config.listener.work)
        else:
            policy = target.no_match if isinstance(target, Router) else getattr(target, "failure", None)
        if policy is not None and policy.action == "keep" and policy.directory is not None:
            folders[target.name] = policy.directory
    if args.step is not None:
        if args.step not in folders:
            raise ConfigurationError(
                f"No step named {args.step!r} keeps files (known: {', '.join(sorted(folders))})"
            )
        folders = {args.step: folders[args.step]}
    moved = []
    watched = config.listener.directory
    for step, folder in folders.items():
        try:
            entries = sorted(os.listdir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            parts = split_work_name(entry)
            if parts is None or entry.endswith(TAGS_SUFFIX):
                continue
            uid, name = parts
            source = os.path.join(folder, entry)
            back = name if not os.path.exists(os.path.join(watched, name)) else entry
            moved.append([step, printable(name)])
            if args.dry_run:
                continue
            # A temporary (ignored) name first, then the rename the listener acts on.
            temporary = os.path.join(watched, f".{uid}.retry")
            os.rename(source, temporary)
            os.rename(temporary, os.path.join(watched, back))
            try:
                os.unlink(source + TAGS_SUFFIX)
            except FileNotFoundError:
                pass
    print(table(["step", "file"], moved) if moved else "nothing to retry")
    verb = "would be put back" if args.dry_run else "put back into " + watched
    print(f"{len(moved)} file(s) {verb}")
    return 0
