"""The code base stays ruff-formatted, ruff- and mypy-clean (the conventions DESIGN.md sets).

The tools' caches go into the venv, so a test writes nothing at the repository's root.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CACHES = Path(sys.prefix) / "cache"
ENVIRONMENT = {**os.environ, "RUFF_CACHE_DIR": str(CACHES / "ruff"), "MYPY_CACHE_DIR": str(CACHES / "mypy")}


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240, env=ENVIRONMENT)


def test_the_code_is_ruff_formatted() -> None:
    done = run(str(BIN / "ruff"), "format", "--check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_nothing() -> None:
    done = run(str(BIN / "ruff"), "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(300)
def test_mypy_finds_nothing() -> None:
    done = run(sys.executable, "-m", "mypy")
    assert done.returncode == 0, done.stdout + done.stderr
