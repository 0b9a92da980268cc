"""Counts and ages on the command line: a negative one is a usage error, whatever the database."""

from __future__ import annotations

import pytest

from datapipelines.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        # SQLite reads LIMIT -3 as "no limit", PostgreSQL refuses it; the catalogue returned nothing.
        ["inventory", "--url", "sqlite:///unused.sqlite3", "list", "--limit", "-3"],
        ["catalog", "--catalog", "unused.db", "find", "--limit", "-1"],
        # gc with a negative age would delete the blobs a running recorder has not committed yet.
        ["audit", "--dir", "unused", "gc", "--min-age", "-5"],
    ],
)
def test_negative_counts_and_ages_are_usage_errors(argv, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert f"argument {argv[-2]}: must not be negative, got '{argv[-1]}'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_count_that_is_no_number_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["catalog", "find", "--limit", "many"])
    assert "argument --limit: expected a number, got 'many'" in capsys.readouterr().err
