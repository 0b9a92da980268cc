"""The command line when its reader goes away or the user presses Ctrl-C: no traceback."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from datapipelines import cli
from datapipelines.cli import check
from datapipelines.sinks.catalog import Catalog


def test_output_piped_into_a_reader_that_stops_early(tmp_path: Path) -> None:
    folder = tmp_path / "metadata"
    folder.mkdir()
    for i in range(600):  # JSON lines well beyond a pipe's buffer
        (folder / f"{i}.json").write_text(json.dumps({"id": i, "text": "x" * 200}), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with Catalog(url) as catalog:
        catalog.generate(folder)
    command = [sys.executable, "-m", "datapipelines.cli", "catalog", "--catalog", url, "dump"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout is not None and process.stderr is not None
    assert json.loads(process.stdout.readline())["id"] == 1
    process.stdout.close()  # as `| head -1` does
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_ctrl_c_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(check, "_check", interrupted)  # registered when the parser is built
    assert cli.main(["check", "pipeline.toml"]) == 130
    assert capsys.readouterr().err == "datapipelines: interrupted\n"
