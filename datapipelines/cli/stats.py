"""``datapipelines stats CONFIG``: a pipeline's counters, and its metrics over HTTP for Prometheus.

    datapipelines stats pipeline.toml [--run module:function] [--json]
    datapipelines stats pipeline.toml --serve :9109 [--run module:function]

Counters live in the process that uses the pipeline, so this command is that
process: it builds the pipeline from CONFIG, calls ``function(pipeline)`` (your
job) when ``--run`` names one, and prints the counters afterwards. With
``--serve [HOST]:PORT`` it serves them at ``http://HOST:PORT/metrics`` (HOST
defaults to 127.0.0.1) while the job runs and until interrupted. An application
that builds its own pipelines serves them with
``datapipelines.prometheus.serve_metrics(pipeline, port=9109)`` instead.
"""

from __future__ import annotations

import argparse
import inspect
import signal
import threading
from typing import Any

from ..errors import ConfigurationError
from .output import print_json, table


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("stats", help="run a pipeline from a config, print or serve its counters")
    parser.add_argument("config", help="the pipeline's TOML file")
    parser.add_argument("--run", metavar="MODULE:FUNCTION", help="call FUNCTION(pipeline) first (your job)")
    parser.add_argument("--serve", metavar="[HOST]:PORT", help="serve Prometheus metrics until interrupted")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=_stats)


def parse_address(value: str) -> tuple[str, int]:
    """``":9109"`` -> ("127.0.0.1", 9109); ``"0.0.0.0:9109"`` listens everywhere."""
    host, separator, port = value.rpartition(":")
    if not separator or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(f"--serve: expected [HOST]:PORT such as :9109, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _print(pipeline: Any, as_json: bool) -> None:
    report = pipeline.stats()
    if as_json:
        print_json({"pipeline": pipeline.name, **report})
        return
    counters = ("hits", "misses", "puts", "errors", "skips", "calls", "joins", "stale", "negative",
                "damaged", "p50_us", "p99_us")  # fmt: skip
    rows = [
        (group[:-1], name, *(entry.get(c) for c in counters))
        for group in ("tiers", "sources")
        for name, entry in report[group].items()
    ]
    print(table(("role", "element", *counters), rows))


def wait_for_interrupt() -> None:
    """Block until SIGINT (Ctrl-C) or SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(3600):
            pass
    except KeyboardInterrupt:
        pass


def _check_takes_a_pipeline(spec: str, job: Any) -> None:
    """Refuse a job that cannot be called as ``job(pipeline)`` before anything is built."""
    try:
        signature = inspect.signature(job)
    except (TypeError, ValueError):
        return  # some builtins have no signature: let the call tell
    try:
        signature.bind(None)
    except TypeError as error:
        raise ConfigurationError(f"--run: {spec} cannot be called as FUNCTION(pipeline) ({error})") from error


def _stats(args: argparse.Namespace) -> int:
    from ..config import resolve
    from ..pipeline import DataPipeline
    from .check import close_elements

    address = parse_address(args.serve) if args.serve else None
    job = None
    if args.run:
        try:
            job = resolve(args.run)
        except ConfigurationError as error:
            raise ConfigurationError(f"--run: {error}") from error
        if not callable(job):
            raise ConfigurationError(f"--run: {args.run} is not a function")
        _check_takes_a_pipeline(args.run, job)
    pipeline = DataPipeline.from_config(args.config)
    server = None
    try:
        if address is not None:
            try:
                from ..prometheus import serve_metrics
            except ImportError as error:
                raise ConfigurationError(str(error)) from error
            try:
                server = serve_metrics(pipeline, port=address[1], addr=address[0])
            except OSError as error:
                reason = error.strerror or error
                raise ConfigurationError(f"--serve: cannot listen on {args.serve} ({reason})") from error
            print(f"serving the metrics of pipeline {pipeline.name!r} at {server.url}", flush=True)
        if job is not None:
            job(pipeline)
        _print(pipeline, args.json)
        if server is not None:
            print("serving until interrupted (Ctrl-C)", flush=True)
            wait_for_interrupt()
    finally:
        if server is not None:
            server.close()
        close_elements(pipeline)
    return 0
