"""``datapipelines check CONFIG``: validate a pipeline config and print its plan for each type.

    datapipelines check pipeline.toml [--json]

Builds the pipeline the way ``DataPipeline.from_config`` does (so a tier that
cannot be made, a source that does not import or an unknown key is the same
one-line error), then prints for every type the pipeline can answer which
element is asked in turn, as which type, through which transformer chain, and
what each sink before it receives.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from .output import print_json, table


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("check", help="validate a pipeline config, print its plan per type")
    parser.add_argument("config", help="the pipeline's TOML file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(func=_check)


def close_elements(pipeline: Any) -> None:
    """Release what the elements hold open (disk caches, Redis pools, databases)."""
    for element in pipeline.elements:
        close = getattr(element, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()


def _role(element: Any) -> str:
    from ..data_source import DataSource
    from ..pipeline import is_tier

    if is_tier(element):
        return "tier"
    return "source" if isinstance(element, DataSource) else "sink"


def _check(args: argparse.Namespace) -> int:
    from ..config import describe_plan
    from ..pipeline import DataPipeline

    pipeline = DataPipeline.from_config(args.config)
    try:
        plans = describe_plan(pipeline)
        elements = [{"element": repr(e), "role": _role(e)} for e in pipeline.elements]
    finally:
        close_elements(pipeline)
    if args.json:
        print_json({"config": args.config, "pipeline": pipeline.name, "elements": elements, "types": plans})
        return 0
    print(f"{args.config}: pipeline {pipeline.name!r} is valid\n")
    print(table(("#", "element", "role"), [(i, e["element"], e["role"]) for i, e in enumerate(elements, 1)]))
    if not plans:
        print("\nno typed source: every type goes to the wildcard sources in order")
    for plan in plans:
        rows = [
            (route["ask"], route["as"], " then ".join(route["convert"]) or None,
             ", ".join(f"{w['sink']} <- {w['gets']}" for w in route["writes_back"]) or None)
            for route in plan["routes"]
        ]  # fmt: skip
        print(f"\n{plan['type']}")
        print(table(("ask", "as", "convert", "writes back"), rows))
    return 0
