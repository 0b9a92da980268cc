"""How every subcommand prints: aligned tables for people, JSON for scripts."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows aligned under headers; numeric columns right-aligned; None shows as "-"."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        bool(rows) and all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))
    ]
    lines = []
    for row in cells:
        aligned = (c.rjust(w) if n else c.ljust(w) for c, w, n in zip(row, widths, numeric, strict=True))
        lines.append("  ".join(aligned).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    return str(value)


def print_json(value: Any) -> None:
    """``value`` as indented JSON with sorted keys; dates in ISO 8601, anything else as text."""
    print(json.dumps(value, indent=2, sort_keys=True, default=_json_value, ensure_ascii=False))
