"""Distributed ingest tests: step functions worker processes import by name, configs, processes.

Every step function appends ``<uid> <pid> <start> <end>`` to the file named by
``DP_TEST_CALLS`` (one ``write`` of a short line with O_APPEND: lines from
several processes never mix), so a test sees which process ran which file when.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

from datapipelines.ingest import IncomingFile


def _note(file: IncomingFile, started: float) -> None:
    line = f"{file.uid} {os.getpid()} {started:.6f} {time.time():.6f}\n"
    fd = os.open(os.environ["DP_TEST_CALLS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def record(file: IncomingFile) -> None:
    """Read the file through (a missing one fails) and note the call."""
    started = time.time()
    file.read_bytes()
    _note(file, started)


def record_slowly(file: IncomingFile) -> None:
    started = time.time()
    time.sleep(float(os.environ.get("DP_TEST_SLEEP", "0.2")))
    _note(file, started)


def fail_twice_on_bad(file: IncomingFile) -> None:
    """A file called bad* fails its first two attempts."""
    record(file)
    if file.name.startswith("bad") and file.attempt < 3:
        raise ValueError(f"attempt {file.attempt} of {file.name} fails")


def die_on_poison(file: IncomingFile) -> None:
    """Kill the worker process on a file called poison*, as an OOM kill would."""
    if file.name.startswith("poison"):
        os._exit(9)
    record(file)


def calls(path: Path) -> list[tuple[str, int, float, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        uid, pid, started, ended = line.split()
        rows.append((uid, int(pid), float(started), float(ended)))
    return rows


def write_config(
    folder: Path,
    url: str,
    prefix: str,
    function: str,
    *,
    lease: float = 30.0,
    max_deliveries: int = 5,
    retry: str = "",
    catalog: bool = False,
    reconcile_every: float = 60.0,
    durability: str = "none",
) -> Path:
    """An ingest config: incoming -> router -> distributed step ``parse`` -> archive (+ catalogue)."""
    for name in ("incoming", "archive"):
        (folder / name).mkdir(exist_ok=True)
    catalog_line = 'catalog = "sqlite:///catalog.db"' if catalog else ""
    config = folder / "ingest.toml"
    config.write_text(
        f"""
[listener]
watch = "incoming"
settle = 0.05
reconcile_every = {reconcile_every}
max_in_flight = 100000

[router]
no_match = "delete"

[[rule]]
kind = "always"
targets = ["parse"]

[[step]]
name = "parse"
function = "{function}"
then = "archive"
max_deliveries = {max_deliveries}
failure = {{ policy = "keep", dir = "trash" }}
queue = {{ url = "{url}", prefix = "{prefix}", lease = {lease} }}
{retry}

[[archive]]
name = "archive"
root = "archive"
template = "{{original_basename}}"
durability = "{durability}"
{catalog_line}
"""
    )
    return config


def environment(calls_file: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "DP_TEST_CALLS": str(calls_file),
        **extra,
    }


def start_cli(arguments: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """``datapipelines ARGUMENTS`` as a process of its own; its output goes to ``log``."""
    with open(log, "ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "datapipelines.cli", *arguments],
            cwd=cwd,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def stop(process: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """SIGTERM, then wait; SIGKILL if it does not end in ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return int(process.returncode)


def clear_prefix(url: str, prefix: str) -> None:
    """Delete the keys a test made under its own prefix (never anything else on a shared server)."""
    with redis.Redis.from_url(url) as client:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
