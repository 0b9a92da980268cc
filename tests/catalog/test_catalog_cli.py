"""``datapipelines catalog`` and the progress printer it uses."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from datapipelines.cli import main
from datapipelines.cli.catalog import parse_filters
from datapipelines.progress import Progress
from datapipelines.sinks.catalog import LocalState


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    metadata = tmp_path / "metadata"
    metadata.mkdir()
    for number in range(4):
        document = {
            "id": number,
            "document_type": "contract" if number % 2 else "letter",
            "retrieved_at": f"2024-02-0{number + 1}T10:00:00Z",
        }
        (metadata / f"{number}.json").write_text(json.dumps(document))
    return metadata


@pytest.fixture
def urls(tmp_path: Path) -> list[str]:
    return ["--catalog", str(tmp_path / "meta" / "catalog.db"), "--state", str(tmp_path / "state.db")]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_generate_update_find_inspect(
    capsys: pytest.CaptureFixture[str], folder: Path, urls: list[str], tmp_path: Path
) -> None:
    (folder / "broken.json").write_text("{")
    code, out, err = run(capsys, "catalog", *urls, "generate", str(folder), "--require", "document_type")
    assert code == 1
    lines = out.splitlines()
    assert lines[0].split() == ["added", "updated", "skipped", "deleted", "restored", "invalid"]
    assert lines[2].split() == ["4", "0", "0", "0", "0", "1"]
    assert "broken.json" in out and "not valid JSON" in out
    assert err == ""  # stderr is not a terminal: no progress bar

    code, out, _ = run(capsys, "catalog", *urls, "--json", "update")
    assert code == 0
    assert json.loads(out) == {
        "added": 4, "updated": 0, "skipped": 0, "deleted": 0, "restored": 0, "invalid": 0, "invalid_files": {}
    }  # fmt: skip

    state = LocalState(urls[1], urls[3])
    record = state.find_one(query={"id": 1})
    assert record is not None
    record["imported"] = True
    record.save()

    code, out, _ = run(capsys, "catalog", *urls, "--json", "find", "document_type=contract", "imported=false")
    assert [r["query"] for r in json.loads(out)] == [{"id": 3}]
    code, out, _ = run(capsys, "catalog", *urls, "find", "retrieved_after=2024-02-02T10:00:00Z")
    header, rule, *rows, total = out.splitlines()
    assert header.split() == ["id", "type", "query", "retrieved_at", "document_type", "imported"]
    assert [row.split()[0] for row in rows] == ["2", "3", "4"]
    assert total == "(3 records)"
    code, out, _ = run(capsys, "catalog", *urls, "find", "--count", "imported=true")
    assert out.strip() == "1"

    code, out, _ = run(capsys, "catalog", *urls, "inspect")
    assert code == 0
    assert "4 records" in out and "document" in out
    assert "4 records, 0 deleted, 1 changed locally" in out
    code, out, _ = run(capsys, "catalog", *urls, "--json", "inspect")
    summary = json.loads(out)
    assert summary["catalog"]["types"]["document"]["records"] == 4
    assert summary["state"]["changed_locally"] == 1


def test_prune_and_deleted_records(capsys: pytest.CaptureFixture[str], folder: Path, urls: list[str]) -> None:
    run(capsys, "catalog", *urls, "generate", str(folder))
    run(capsys, "catalog", *urls, "update")
    (folder / "0.json").unlink()
    code, out, _ = run(capsys, "catalog", *urls, "--json", "generate", str(folder), "--prune")
    assert (code, json.loads(out)["deleted"]) == (0, 1)
    code, out, _ = run(capsys, "catalog", *urls, "--json", "update", "--reason", "withdrawn")
    assert json.loads(out)["deleted"] == 1
    code, out, _ = run(
        capsys, "catalog", *urls, "--json", "find", "--include-deleted", "deleted_reason=withdrawn"
    )
    assert [r["query"] for r in json.loads(out)] == [{"id": 0}]


def test_errors_are_clear(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("DATAPIPELINES_CATALOG", raising=False)
    code, _, err = run(capsys, "catalog", "--catalog", "", "find")
    assert code == 2 and "pass --catalog URL or set DATAPIPELINES_CATALOG" in err
    code, _, err = run(capsys, "catalog", "--catalog", str(tmp_path / "c.db"), "update")
    assert code == 2 and "pass --state URL" in err
    code, _, err = run(
        capsys, "catalog", "--catalog", str(tmp_path / "c.db"), "generate", str(tmp_path / "nope")
    )
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "catalog", "--catalog", str(tmp_path / "c.db"), "find", "retrieved_after=soon")
    assert code == 2 and "'retrieved_after' needs an ISO 8601 date, got 'soon'" in err


def test_parse_filters() -> None:
    assert parse_filters(["a=1", "b=true", "c=null", "d=text", "e=", 'q={"id": 2}']) == {
        "a": 1, "b": True, "c": None, "d": "text", "e": "", "q": {"id": 2}
    }  # fmt: skip
    # Date bounds stay text, as the Python API takes them (a "2019" is not the number 2019).
    assert parse_filters(["retrieved_before=2024-01-01", "year_after=2019"]) == {
        "retrieved_before": "2024-01-01", "year_after": "2019"
    }  # fmt: skip


# -- the progress printer --------------------------------------------------------------
class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_draws_at_most_every_interval_and_always_the_end() -> None:
    stream, ticks = io.StringIO(), Ticks()
    with Progress("generate", stream=stream, enabled=True, interval=1.0, clock=ticks) as bar:
        bar.update(1, 10)
        bar.update(2)  # too soon: not drawn
        ticks.now = 1.5
        bar.advance(3)
        bar.update(10)  # finished: drawn however soon
    frames = stream.getvalue().split("\r")[1:]
    assert frames[0] == "generate [###...........................]  10% 1/10"
    assert frames[1].endswith(" 50% 5/10")
    assert frames[2].endswith("100% 10/10")
    assert frames[-1] == "generate [##############################] 100% 10/10\n"
    assert len(frames) == 4


def test_progress_is_silent_off_a_terminal() -> None:
    stream = io.StringIO()
    with Progress("update", stream=stream) as bar:
        bar.update(5, 10)
    assert stream.getvalue() == ""
    assert Progress("count", enabled=True, stream=io.StringIO()).render() == "count 0"
