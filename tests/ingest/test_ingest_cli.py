"""``datapipelines ingest run|status|retry`` as users run it: real processes, a TOML file, killed mid-run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from datapipelines.cli import main
from tests.support.ingest import drop, files_under, wait_for

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(120)

CONFIG = """
[listener]
watch = "incoming"
settle = 0.1

[router]
no_match = {{ policy = "keep", dir = "nomatch" }}

[[rule]]
kind = "fnmatch"
pattern = "*.csv"
targets = ["{first}"]

[[step]]
name = "parse"
function = "tests.support.ingest:{function}"
workers = {workers}
then = "archive"
retry = {{ total = 1, min_wait = 0.05 }}
failure = {{ policy = "keep", dir = "trash" }}

[[archive]]
root = "archive"
template = "{{original_basename}}"
catalog = "sqlite:///catalog.db"
"""


def write_config(folder: Path, function: str = "fail_on_bad", workers: int = 0, first: str = "parse") -> Path:
    (folder / "incoming").mkdir(exist_ok=True)
    path = folder / "ingest.toml"
    path.write_text(CONFIG.format(function=function, workers=workers, first=first))
    return path


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "datapipelines.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def test_run_until_idle_then_status_and_retry(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    for name in ("a.csv", "b.csv", "bad.csv", "other.txt"):
        drop(tmp_path / "incoming", name)
    done = cli("ingest", "run", str(config), "--until-idle")
    assert done.returncode == 0, done.stderr
    assert "parse" in done.stdout and "Traceback" not in done.stderr
    assert sorted(p.name for p in (tmp_path / "archive").iterdir() if p.is_file()) == [
        "a.csv",
        "a.csv.tags",
        "b.csv",
        "b.csv.tags",
    ]
    assert any(p.name.endswith("__other.txt") for p in files_under(tmp_path / "nomatch"))
    assert any(p.name.endswith("__bad.csv") for p in files_under(tmp_path / "trash"))

    status = cli("ingest", "status", str(config), "--json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)["ingest"]
    assert report["steps"]["parse"]["succeeded"] == 2 and report["steps"]["parse"]["dead"] == 1
    table = cli("ingest", "status", str(config))
    assert "not running" in table.stdout and "parse" in table.stdout

    dry = cli("ingest", "retry", str(config), "--step", "parse", "--dry-run")
    assert "bad.csv" in dry.stdout and any(
        p.name.endswith("__bad.csv") for p in files_under(tmp_path / "trash")
    )
    retried = cli("ingest", "retry", str(config), "--step", "parse")
    assert retried.returncode == 0 and "1 file(s) put back" in retried.stdout
    assert (tmp_path / "incoming" / "bad.csv").exists() and not files_under(tmp_path / "trash")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda c: c.replace('kind = "fnmatch"', 'kind = "glob"'),
            r"rule\[0\].kind: unknown rule kind 'glob'",
        ),
        (
            lambda c: c.replace("tests.support.ingest:fail_on_bad", "no_such_module:f"),
            r"step\[0\].function: cannot import 'no_such_module:f' \(ModuleNotFoundError: No module named",
        ),
        (
            lambda c: c.replace("tests.support.ingest:fail_on_bad", "ingest_support.fail_on_bad"),
            r"step\[0\].function: expected 'module:object', got 'ingest_support.fail_on_bad'",
        ),
        (
            lambda c: c.replace("tests.support.ingest:fail_on_bad", "tests.support.ingest:nothing"),
            r"step\[0\].function: module 'tests\.support\.ingest' has no 'nothing'",
        ),
        (
            lambda c: c.replace("tests.support.ingest:fail_on_bad", "tests.support.ingest:__name__"),
            r"step\[0\].function: 'tests\.support\.ingest:__name__' is not callable",
        ),
        (
            lambda c: c.replace('watch = "incoming"', 'watch = "missing"'),
            r"listener.watch: the folder .*missing",
        ),
        (
            lambda c: c + '\n[[step]]\nname = "parse"\nfunction = "tests.support.ingest:no_op"\n',
            r"step\[1\].name: two steps or archives are named 'parse'",
        ),
        (lambda c: c.replace("workers = 0", 'workers = "many"'), r"step\[0\].workers: must be a int"),
        (lambda c: c + "\n[extra]\n", r"extra: unknown key"),
        (lambda c: c.replace("[listener]", "[listener"), r"not valid TOML"),
    ],
)
def test_a_bad_config_is_one_line_naming_the_file_and_key(
    tmp_path: Path, change: object, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    config.write_text(change(config.read_text()))  # type: ignore[operator]
    assert main(["ingest", "run", str(config), "--until-idle"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"datapipelines: error: ingest config {config}"), errors
    assert re.search(message, errors[0]), errors[0]
    assert not (tmp_path / "archive").exists()


def test_sigkill_the_whole_ingest_and_the_next_start_finishes_everything(tmp_path: Path) -> None:
    config = write_config(tmp_path, function="slow", workers=0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "datapipelines.cli", "ingest", "run", str(config)], env=env
    )
    names = [f"k{index:02d}.csv" for index in range(30)]
    for name in names:
        drop(tmp_path / "incoming", name)
    work = tmp_path / "incoming" / ".work"
    wait_for(
        lambda: (tmp_path / "archive").exists() and len(list((tmp_path / "archive").glob("*.tags"))) >= 3
    )
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert [p for p in files_under(work) if "__" in p.name]  # claimed files left behind by the crash
    done = cli("ingest", "run", str(config), "--until-idle")
    assert done.returncode == 0, done.stderr
    archived = sorted(p.name for p in (tmp_path / "archive").iterdir() if p.is_file())
    assert archived == sorted(names + [n + ".tags" for n in names])
    assert [p.name for p in files_under(work)] == [".status.json"]
    from datapipelines.ingest import ArchivedFile
    from datapipelines.sinks.catalog import Catalog

    with Catalog(f"sqlite:///{tmp_path / 'catalog.db'}", types=[ArchivedFile]) as catalog:
        assert catalog.count() == 30
    status = json.loads((work / ".status.json").read_text())
    assert status["ingest"]["reprocessed"] >= 1
