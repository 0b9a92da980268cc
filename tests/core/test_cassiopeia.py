"""Cassiopeia 5.x and cassiopeia-diskstore from PyPI run unchanged on this project.

The pinned packages go into a venv beside the project (under ``~/.cache/datapipelines-tests/``,
outside the repository), made once and reused while the pins, the Python and the project's
pyproject.toml stay the same; this project is installed into it in editable
mode, in the place of datapipelines 1.x. ``cassiopeia_driver.py`` then runs a
Cassiopeia program there, offline, against canned Riot API answers.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.venvs import make_venv, need_index

ROOT = Path(__file__).resolve().parents[2]
PINS = ("cassiopeia==5.1.3", "cassiopeia-diskstore==1.1.3")
# Outside the repository: a test writes nothing at its root.
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "datapipelines-tests"
VENV = CACHE / f"venv-cassiopeia-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:12]}"
DRIVER = ROOT / "tests" / "support" / "cassiopeia_driver.py"


def _stamp() -> str:
    """What the venv was made from; a different one means making it again."""
    pyproject = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return json.dumps({"pins": PINS, "python": sys.version, "project": str(ROOT), "pyproject": pyproject})


def _make_venv(scratch: Path) -> Path:
    stamp_file = VENV / ".installed"
    if stamp_file.exists() and stamp_file.read_text() == _stamp():
        return VENV / "bin" / "python"
    need_index(PINS[1], scratch)
    shutil.rmtree(VENV, ignore_errors=True)
    # Cassiopeia first (it pulls datapipelines 1.x), then this project over it.
    python = make_venv(VENV, PINS, ("-e", str(ROOT)))
    stamp_file.write_text(_stamp())
    return python


@pytest.fixture(scope="module")
def cassiopeia_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = VENV.with_suffix(".lock")
    with lock.open("w") as held:
        # Two runs at once must not build the same venv together.
        fcntl.flock(held, fcntl.LOCK_EX)
        return _make_venv(tmp_path_factory.mktemp("probe"))


@pytest.fixture(scope="module")
def report(cassiopeia_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("home")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),  # Cassiopeia's default disk path and any config land here
        "TMPDIR": str(home),
        "RIOT_API_KEY": "",
    }
    done = subprocess.run(
        [str(cassiopeia_python), str(DRIVER)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=home,
        env=env,
    )
    assert done.returncode == 0, f"the Cassiopeia program failed:\n{done.stderr[-6000:]}"
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.mark.timeout(900)
def test_the_program_runs_on_this_project_not_on_1x(report: dict[str, Any]) -> None:
    assert report["datapipelines_version"].startswith("2.")
    assert Path(report["datapipelines_file"]).is_relative_to(ROOT)
    assert report["pipeline_elements"] == ["Cache", "SimpleKVDiskStore"]


@pytest.mark.timeout(900)
def test_set_riot_api_key_reaches_the_requests_sent(report: dict[str, Any]) -> None:
    assert report["first_load"]["api_key_sent"] == "RGAPI-set-by-program"


@pytest.mark.timeout(900)
def test_a_summoner_is_loaded_once_from_the_api_then_from_memory_then_from_disk(
    report: dict[str, Any],
) -> None:
    assert report["first_load"] == {"level": 321, "api_calls": 1, "api_key_sent": "RGAPI-set-by-program"}
    assert report["second_load"] == {"level": 321, "api_calls": 1}
    assert report["from_disk"] == {"level": 321, "api_calls": 1}


@pytest.mark.timeout(900)
def test_expire_sinks_keeps_fresh_values_and_clear_sinks_empties_every_store(report: dict[str, Any]) -> None:
    assert report["after_expire"] == {"level": 321, "api_calls": 1}
    assert report["disk_services"] == 9  # SimpleKVDiskStore reached each service through _sinks.values()
    assert report["after_clear"] == {"level": 321, "api_calls": 2}


@pytest.mark.timeout(900)
def test_a_missing_summoner_is_not_found(report: dict[str, Any]) -> None:
    # As with 1.0.7: the failed load and the exists check each ask the API.
    assert report["missing"] == {"error": "NotFoundError", "exists": False, "api_calls": 4}
    assert report["paths"] == [
        "/euw1.api.riotgames.com/lol/summoner/v4/summoners/by-puuid/puuid-ann",
        "/euw1.api.riotgames.com/lol/summoner/v4/summoners/by-puuid/puuid-nobody",
    ]


@pytest.mark.timeout(900)
def test_kernel_set_server_url_and_port_reaches_every_kernel_source(report: dict[str, Any]) -> None:
    assert report["kernel"] == {"sources": 8, "addresses": ["http://127.0.0.1:8999"]}
