"""The CLI's output helpers: tables escape what a terminal would act on; JSON stays exact."""

from __future__ import annotations

import json

from datapipelines.cli.output import json_text, printable, table

NASTY = ["\x1b[31m", "\x07", "\r", "\n", "\x08", "\x7f", "\x9b", "\u202e", "\u2028", "\ud800", "\U000e0001"]


def test_every_cell_and_header_of_a_table_is_printable():
    text = table(["name\x1b[0m", "n"], [[f"a{char}b", 1] for char in NASTY] + [[None, 2]])
    lines = text.split("\n")
    assert len(lines) == len(NASTY) + 3 and all(line.isprintable() for line in lines)
    assert lines[0].startswith("name\\x1b[0m") and lines[2].startswith("a\\x1b[31mb")
    assert [line.split()[0] for line in lines[2:]][-5:] == [
        "a\\u202eb",
        "a\\u2028b",
        "a\\ud800b",
        "a\\U000e0001b",
        "-",
    ]


def test_plain_text_is_left_alone():
    assert printable("Oslo, Zürich & 東京 \\x1b") == "Oslo, Zürich & 東京 \\x1b"
    assert table(["a"], [[3]]) == "a\n-\n3"


def test_json_text_round_trips_and_prints_nothing_raw():
    value = {"names": [f"x{char}y" for char in NASTY], "plain": "Zürich"}
    text = json_text(value)
    assert json.loads(text) == value
    assert all(line.isprintable() for line in text.split("\n")) and "Zürich" in text
