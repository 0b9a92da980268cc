"""The ``datapipelines`` command: one subcommand group per module in this package.

Each module exposes ``register(subparsers)``, which adds its group and sets
``func`` on the parsed arguments; ``main`` runs it and returns its exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..errors import DataPipelinesError

# Subcommand groups, each a module of this package with a register(subparsers).
GROUPS: tuple[str, ...] = ("audit", "inventory", "catalog", "ingest")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datapipelines", description="Tiered cache pipeline tools.")
    subparsers = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for group in GROUPS:
        importlib.import_module(f"{__name__}.{group}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DataPipelinesError as error:
        print(f"datapipelines: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
