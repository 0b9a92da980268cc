"""``datapipelines ingest``: run an ingest from a TOML file, watch its counters, retry what it kept.

datapipelines ingest run CONFIG [--until-idle]
datapipelines ingest worker CONFIG --step NAME [-n PROCESSES] [--consumer NAME]
datapipelines ingest status CONFIG [--watch SECONDS] [--json]
datapipelines ingest retry CONFIG [--step NAME] [--dry-run]
datapipelines ingest dead list|retry|drop CONFIG --step NAME [ID ...] [--all]
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


class _StepAndIds(argparse.Action):
    """``--step NAME [ID ...]``: ids may follow the step's name as well as come before the option."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None) -> None:
        namespace.step = values[0]
        namespace.ids = [*(getattr(namespace, "ids", None) or []), *values[1:]]


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
    worker = commands.add_parser("worker", help="work a distributed step (one with a queue) until SIGTERM")
    worker.add_argument("config", help="the ingest's TOML file")
    worker.add_argument("--step", required=True, help="the distributed step to work")
    worker.add_argument("-n", "--processes", type=int, default=1, help="worker processes (default 1)")
    worker.add_argument("--consumer", help="consumer name (default: host name and a random suffix)")
    worker.add_argument("--count", type=int, help="entries read at a time (default: the batch size, or 20)")
    worker.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    worker.set_defaults(func=_worker)
    dead = commands.add_parser(
        "dead", help="files a distributed step dead-lettered: list, retry or drop them"
    )
    dead.add_argument("action", choices=("list", "retry", "drop"))
    dead.add_argument("config", help="the ingest's TOML file")
    dead.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids (as listed) to retry or drop")
    dead.add_argument(
        "--step", required=True, nargs="+", action=_StepAndIds, metavar=("NAME", "ID"), help="the step, ids"
    )
    dead.add_argument("--all", action="store_true", help="retry or drop every dead letter of the step")
    dead.set_defaults(func=_dead)
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


def _worker(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..ingest.config import load_config
    from ..ingest.step_workers import check_reachable, distributed_step, supervise, work

    if args.processes < 1:
        raise ConfigurationError(f"-n must be at least 1, got {args.processes}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    check_reachable(distributed_step(load_config(args.config), args.step))
    if args.processes == 1:
        print_json({"step": args.step, "counters": work(args.config, args.step, args.consumer, args.count)})
    else:
        restarts = supervise(args.config, args.step, args.processes, args.consumer, args.count)
        print_json({"step": args.step, "restarts": restarts})
    return 0


def _dead(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..ingest.config import load_config
    from ..ingest.dead_letters import drop, listing, retry
    from ..ingest.step_workers import distributed_step

    config = load_config(args.config)
    step = distributed_step(config, args.step)
    if args.action == "list":
        rows = listing(step)
        print(table(["dead id", "entry", "deliveries", "uid", "file"], rows) if rows else "no dead letters")
        return 0
    if not args.ids and not args.all:
        raise ConfigurationError(f"ingest dead {args.action}: name the dead letters (IDs as listed) or --all")
    if args.action == "retry":
        rows = retry(step, config.listener.work, args.ids or None)
        print(table(["dead id", "file", "result"], rows) if rows else "no dead letters")
    else:
        print(f"{drop(step, args.ids or None)} dead letter(s) dropped")
    return 0


def _status_path(config: Any) -> str:
    from ..ingest.engine import STATUS_FILE

    return os.path.join(config.listener.work, STATUS_FILE)


def _read_status(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)  # type: ignore[no-any-return]
    except FileNotFoundError:
        return None


def _status(args: argparse.Namespace) -> int:
    from ..errors import ConfigurationError
    from ..ingest.config import load_config
    from ..ingest.distributed import DistributedStep, queue_status
    from ..ingest.files import process_alive

    config = load_config(args.config)
    path = _status_path(config)
    distributed = [t for t in config.targets.values() if isinstance(t, DistributedStep)]
    while True:
        status = _read_status(path)
        if status is None and not distributed:
            raise ConfigurationError(f"No ingest status at {path}: has this ingest run yet?")
        queues = {step.name: queue_status(step) for step in distributed}
        if args.json:
            print_json({**(status or {}), "distributed": queues})
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            if status is None:
                print(f"no listener status at {path} yet")
            else:
                age = time.time() - status["time"]
                alive = process_alive(status["pid"])
                state = "running" if alive else "not running"
                print(f"ingest pid {status['pid']} ({state}), status written {age:.1f} s ago")
                print_report(status["ingest"])
            if queues:
                print()
                print_queues(queues)
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


_QUEUE_COLUMNS = ("outstanding", "pending", "delayed", "oldest_age_s", "dead")


def print_queues(queues: dict[str, dict[str, Any]]) -> None:
    """Per distributed step: its stream's counts, then each consumer's pending entries and idle time."""
    rows = [[name, *(status.get(c) for c in _QUEUE_COLUMNS)] for name, status in queues.items()]
    print(table(["distributed step", *_QUEUE_COLUMNS], rows))
    consumers = [
        [name, consumer["name"], consumer["pending"], consumer["idle_s"]]
        for name, status in queues.items()
        for consumer in status["consumers"]
    ]
    if consumers:
        print()
        print(table(["distributed step", "consumer", "pending", "idle_s"], consumers))


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
