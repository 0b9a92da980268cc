"""Shared pieces of the ingest tests: step functions importable by worker processes, file drops, waits."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from datapipelines.ingest import IncomingFile


def drop(folder: Path, name: str, data: bytes = b"x") -> Path:
    """Write ``name`` the way a well-behaved sender does: a temporary name, then a rename."""
    temporary = folder / f".{name}.part"
    temporary.write_bytes(data)
    final = folder / name
    os.rename(temporary, final)
    return final


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.01) -> Any:
    """Poll ``condition`` until it is truthy; fail with its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    value = condition()
    while not value:
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last value {value!r})")
        time.sleep(interval)
        value = condition()
    return value


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def no_op(file: IncomingFile) -> None:
    """A step that accepts every file."""


def sleep_1ms(file: IncomingFile) -> None:
    time.sleep(0.001)


def read_whole(file: IncomingFile) -> bool:
    """Succeeds when the file is readable to the end (it is opened, so a missing file fails)."""
    with open(file.path, "rb") as handle:
        handle.read()
    return True


def die_on_poison(file: IncomingFile) -> None:
    """Kill the worker process on a file called poison*, like an OOM kill would."""
    if file.name.startswith("poison"):
        os._exit(9)


def slow(file: IncomingFile) -> None:
    time.sleep(0.2)


def batch_of_flags(files: list[IncomingFile]) -> Iterable[bool]:
    """A batch step: files named bad* fail, the others succeed."""
    return [not f.name.startswith("bad") for f in files]


def fail_on_bad(file: IncomingFile) -> None:
    if file.name.startswith("bad"):
        raise ValueError(f"{file.name} is bad")


def note_pid(file: IncomingFile) -> None:
    """A step that leaves its process id in the folder named by DP_TEST_PID_DIR (which workers ran)."""
    with open(os.path.join(os.environ["DP_TEST_PID_DIR"], str(os.getpid())), "a") as handle:
        handle.write(file.name + "\n")
