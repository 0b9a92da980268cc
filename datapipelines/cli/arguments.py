"""Argument types the subcommands share."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def non_negative(convert: Callable[[str], float]) -> Callable[[str], float]:
    """An argparse ``type`` refusing negative numbers, which SQLite and PostgreSQL read differently."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
        return value

    parse.__name__ = convert.__name__
    return parse
