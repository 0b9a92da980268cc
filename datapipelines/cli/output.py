"""How every subcommand prints: aligned tables for people, JSON for scripts.

Values come from files anyone may have written (session names, meta, URLs): a
control character or terminal escape sequence in them is shown escaped
(``\\x1b``), never sent to the terminal.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any


def _escape(char: str) -> str:
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(value: Any) -> str:
    """``str(value)`` with every character a terminal would not print as itself escaped.

    Escaped: control characters (ESC, CR, backspace, C1 codes such as CSI), format
    characters (bidirectional overrides), line and paragraph separators, and
    characters that are not valid text (lone surrogates).
    """
    text = str(value)
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows aligned under headers; numeric columns right-aligned; None shows as "-"; see ``printable``."""
    cells = [[printable(h) for h in headers]] + [
        ["-" if c is None else printable(c) for c in row] for row in rows
    ]
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


def _json_escape(char: str) -> str:
    # JSON spells a character by its UTF-16 code units.
    units = char.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))


def json_text(value: Any) -> str:
    """``value`` as indented JSON with sorted keys; dates in ISO 8601, anything else as text.

    Exact JSON: ``json.loads`` gives ``value`` back. Characters a terminal would act
    on are written as ``\\u`` escapes (json escapes only C0 controls by itself).
    """
    text = json.dumps(value, indent=2, sort_keys=True, default=_json_value, ensure_ascii=False)
    # Raw newlines are the indentation's; inside strings json has escaped them already.
    return "\n".join(
        line if line.isprintable() else "".join(c if c.isprintable() else _json_escape(c) for c in line)
        for line in text.split("\n")
    )


def print_json(value: Any) -> None:
    """Print ``json_text(value)``."""
    print(json_text(value))
