"""The ``datapipelines`` command: one subcommand group per module in this package.

Each module exposes ``register(subparsers)``, which adds its group and sets
``func`` on the parsed arguments; ``main`` runs it and returns its exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..errors import DataPipelinesError
from ..extras import MissingExtraError
from .output import printable

# Subcommand groups, each a module of this package with a register(subparsers).
GROUPS: tuple[str, ...] = ("audit", "inventory", "catalog", "ingest", "check", "stats")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datapipelines", description="Tiered cache pipeline tools.")
    subparsers = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for group in GROUPS:
        try:
            importlib.import_module(f"{__name__}.{group}").register(subparsers)
        except MissingExtraError as missing:
            # The other groups still work; this one says which extra it needs when used.
            _register_unavailable(subparsers, group, missing)
    return parser


def _register_unavailable(subparsers: Any, group: str, missing: MissingExtraError) -> None:
    # No option prefix: whatever follows, --help included, is taken in and answered with the error.
    parser = subparsers.add_parser(group, help=f"(unavailable: {missing})", add_help=False, prefix_chars="\0")
    parser.add_argument("rest", nargs="*")

    def unavailable(args: argparse.Namespace) -> int:
        raise missing

    parser.set_defaults(func=unavailable)


class _WarningLines(logging.Handler):
    """The library's warnings as ``datapipelines: warning: ...`` lines, control characters
    escaped as in every table (Python's fallback printed them raw, paths and all)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"datapipelines: warning: {printable(record.getMessage())}", file=sys.stderr)
        except Exception:
            self.handleError(record)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logger = logging.getLogger("datapipelines")
    warnings = _WarningLines()
    logger.addHandler(warnings)
    try:
        return _run(args)
    finally:
        logger.removeHandler(warnings)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except DataPipelinesError as error:
        # One line, whatever the message quotes from a file: control characters escaped.
        print(f"datapipelines: error: {printable(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`dump | head`): stop quietly, and keep the interpreter's
        # final flush of stdout from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("datapipelines: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
