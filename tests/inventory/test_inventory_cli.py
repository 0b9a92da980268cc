"""``datapipelines inventory status|list|retry``, as tables and as JSON."""

from __future__ import annotations

import json

import pytest

from datapipelines.cli import main
from tests.support import inventory as support
from tests.support.inventory import Database

db, sqlite_db = support.db, support.sqlite_db


def _scenario(db: Database):
    """j1: 0..4 succeeded, 5..9 failed for good; j2: 0..3 running; j1 backfill 2..4 running."""
    db.items()
    inventory = db.inventory(max_attempts=1)
    inventory.acquire_batch("j1", count=5).succeeded({"rows": 5})
    inventory.acquire_batch("j1").failed(ValueError("disk full"))
    inventory.acquire_batch("j2", weight=12)
    inventory.acquire_batch("j1", id_min=2, id_max=4)
    return inventory


def _run(db: Database, capsys, *argv: str) -> tuple[int, str]:
    schema = ["--schema", db.schema] if db.schema else []
    code = main(["inventory", "--url", db.url, *schema, *argv])
    return code, capsys.readouterr().out


def test_status_json_on_both_databases(db: Database, capsys) -> None:
    _scenario(db)
    code, out = _run(db, capsys, "--json", "status")
    assert code == 0
    jobs = {job["job"]: job for job in json.loads(out)}
    assert jobs["j1"] | {"source_table": None} == {
        "job": "j1", "source_table": None, "batches": 3, "running": 1, "succeeded": 1, "failed": 1,
        "exhausted": 1, "expired": 0, "last_id": 9, "items": 5, "weight": 20, "max_attempt": 1,
    }  # fmt: skip
    assert (jobs["j2"]["running"], jobs["j2"]["last_id"], jobs["j2"]["items"]) == (1, 3, 0)


def test_status_table(sqlite_db: Database, capsys) -> None:
    _scenario(sqlite_db)
    code, out = _run(sqlite_db, capsys, "status")
    assert code == 0
    header, rule, j1, j2 = out.splitlines()
    assert header.split()[:6] == ["job", "source", "ranges", "running", "succeeded", "failed"]
    assert set(rule) == {"-", " "}
    assert j1.split() == ["j1", "items", "3", "1", "1", "1", "1", "0", "9", "5", "20", "1"]
    assert j2.split() == ["j2", "items", "1", "1", "0", "0", "0", "0", "3", "0", "0", "1"]


def test_list_table_json_and_filters(sqlite_db: Database, capsys) -> None:
    _scenario(sqlite_db)
    code, out = _run(sqlite_db, capsys, "list", "--job", "j1", "--log")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:8] == ["row", "job", "kind", "ids", "count", "weight", "attempt", "status"]
    assert [line.split()[:8] for line in lines[2:5]] == [
        ["1", "j1", "new", "0..4", "5", "20", "1/1", "succeeded"],
        ["2", "j1", "new", "5..9", "5", "70", "1/1", "failed"],
        ["4", "j1", "backfill", "2..4", "3", "18", "1/1", "running"],
    ]
    assert "-- row 2 (j1, ids 5..9) --" in out and "ValueError: disk full" in out

    code, out = _run(sqlite_db, capsys, "--json", "list", "--status", "running", "--limit", "1")
    [row] = json.loads(out)
    assert (row["id"], row["job"], row["backfill"], row["expired"]) == (4, "j1", True, False)
    assert row["config"]["id_min"] == 2


def test_list_log_escapes_control_characters(sqlite_db: Database, capsys) -> None:
    sqlite_db.items()
    inventory = sqlite_db.inventory(max_attempts=1)
    inventory.acquire_batch("j\x1b[31m1", count=2).failed(RuntimeError("boom \x1b[2J\rgone"))
    code, out = _run(sqlite_db, capsys, "list", "--log")
    assert code == 0
    assert "\x1b" not in out and "\r" not in out
    assert "-- row 1 (j\\x1b[31m1, ids 0..1) --" in out
    assert "RuntimeError: boom \\x1b[2J\\x0dgone" in out


def test_retry_grants_another_attempt(sqlite_db: Database, capsys) -> None:
    inventory = _scenario(sqlite_db)
    assert _run(sqlite_db, capsys, "retry", "--job", "j2") == (0, "0 failed range(s) get one more attempt\n")
    code, out = _run(sqlite_db, capsys, "--json", "retry", "--id", "2")
    assert (code, json.loads(out)) == (0, {"retried": 1})
    again = inventory.acquire_batch("j1")
    assert (again.id_range, again.attempt) == ((5, 9), 2)


def test_missing_inventory_is_an_error(tmp_path, capsys) -> None:
    url = f"sqlite:///{tmp_path / 'none.sqlite3'}"
    assert main(["inventory", "--url", url, "status"]) == 2
    assert "No inventory table 'datapipelines_inventory' in sqlite:///" in capsys.readouterr().err
    assert not (tmp_path / "none.sqlite3").exists()


def test_url_from_environment(sqlite_db: Database, capsys, monkeypatch) -> None:
    _scenario(sqlite_db)
    monkeypatch.setenv("DATAPIPELINES_INVENTORY_URL", sqlite_db.url)
    assert main(["inventory", "--json", "status"]) == 0
    assert [job["job"] for job in json.loads(capsys.readouterr().out)] == ["j1", "j2"]


@pytest.mark.parametrize("argv", [["inventory"], ["inventory", "list", "--status", "lost"]])
def test_bad_arguments_exit_with_usage(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: datapipelines inventory" in capsys.readouterr().err
