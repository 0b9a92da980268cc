"""Scratch virtual environments for tests that install this project the way users do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def pip(python: Path | str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def need_index(requirement: str, scratch: Path) -> None:
    """Skip the test when the package index cannot serve ``requirement`` (one quick download).

    Under CI=true the index is reachable by definition, so a failure there fails the test.
    """
    probe = pip(
        sys.executable,
        "download",
        "--no-deps",
        "--timeout",
        "10",
        "--retries",
        "0",
        "--dest",
        str(scratch),
        requirement,
        timeout=60,
    )
    if probe.returncode == 0:
        return
    last = (probe.stderr.strip().splitlines() or [f"pip download exited {probe.returncode}"])[-1]
    message = f"the package index cannot be reached to install {requirement}: {last}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def make_venv(directory: Path, *installs: tuple[str, ...]) -> Path:
    """A new venv in ``directory`` with each argument tuple pip-installed in turn; its python."""
    subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=120)
    python = directory / "bin" / "python"
    for args in installs:
        done = pip(python, "install", "--quiet", *args)
        assert done.returncode == 0, f"pip install {' '.join(args)} failed:\n{done.stderr[-3000:]}"
    return python
