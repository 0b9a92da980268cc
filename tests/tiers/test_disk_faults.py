"""DiskStore under faults: a locked or read-only database costs bounded time, is counted and
skipped; opening one fails with an error naming the directory; a removed directory is reopened."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache
import pytest

from datapipelines import MISSING, DataPipeline, DataPipelinesError
from datapipelines.breaker import CircuitBreaker
from datapipelines.sinks.disk import DiskStore, DiskStoreError
from tests.support.resilience import CountingSource, Reading, wait_until


def finishes(call: Callable[[], Any], within: float = 20.0) -> Any:
    """``call()``'s result, failing the test (not hanging it) if it does not return in time."""
    outcome: list[Any] = []
    worker = threading.Thread(target=lambda: outcome.append(call()), daemon=True)
    worker.start()
    worker.join(within)
    assert not worker.is_alive(), f"still running after {within}s: the store hangs"
    assert outcome, "the call raised (see the thread's traceback above)"
    return outcome[0]


def disk_pipeline(store: DiskStore, failures: int = 2) -> tuple[DataPipeline, CountingSource]:
    source = CountingSource()
    pipeline = DataPipeline([store, source], breaker=lambda: CircuitBreaker(failures=failures, cooldown=60))
    return pipeline, source


def tier(pipeline: DataPipeline, store: DiskStore) -> dict[str, Any]:
    return pipeline.stats()["tiers"][repr(store)]


def read_in_another_process(directory: Path, n: int) -> str:
    """What a fresh process finds in ``directory`` for Reading ``{"id": n}``."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[2])\n"
        "from tests.support.resilience import Reading\n"
        "from datapipelines.sinks.disk import DiskStore\n"
        "print(DiskStore(sys.argv[1]).lookup(Reading, {'id': int(sys.argv[3])}))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", script, str(directory), root, str(n)],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return done.stdout.strip()


# -- without mounts ------------------------------------------------------------------------------
def test_a_database_locked_by_another_writer_costs_bounded_time_and_is_counted(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "cache", timeout=0.2)
    pipeline, _ = disk_pipeline(store)
    holder = sqlite3.connect(tmp_path / "cache" / diskcache.core.DBNAME, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a stuck writer: nobody else may write until it lets go
    try:
        assert finishes(lambda: pipeline.get(Reading, {"id": 1})) == Reading(1, "v1")
        assert tier(pipeline, store)["errors"] == 1  # the write-back gave up after the timeout
        finishes(lambda: pipeline.get(Reading, {"id": 2}))
        assert tier(pipeline, store)["breaker"] == "open"
        error = finishes(lambda: _raises(lambda: store.store_many(Reading, [({"id": 3}, Reading(3, "x"))])))
        assert isinstance(error, DiskStoreError) and isinstance(error, DataPipelinesError)
        assert str(tmp_path / "cache") in str(error)
        assert isinstance(error.__cause__, diskcache.Timeout)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    store.store_many(Reading, [({"id": 3}, Reading(3, "x"))])  # the lock is gone: writes work again
    assert store.lookup(Reading, {"id": 3}) == Reading(3, "x")


def _raises(call: Callable[[], Any]) -> BaseException:
    """The exception ``call`` raises, returned, so ``finishes`` can bound how long it takes."""
    try:
        call()
    except BaseException as error:
        return error
    raise AssertionError("expected an exception")


def test_sqlite_errors_on_open_become_a_library_error_naming_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(diskcache.Cache, "__init__", refuse)
    with pytest.raises(DiskStoreError, match=f"cannot open '{tmp_path / 'cache'}'") as raised:
        DiskStore(tmp_path / "cache")
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)


def test_a_removed_directory_is_reopened_and_other_processes_see_what_is_written_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "cache"
    store = DiskStore(directory, check_every=0)
    pipeline, _ = disk_pipeline(store)
    pipeline.get(Reading, {"id": 1})
    assert read_in_another_process(directory, 1) == "Reading(id=1, value='v1')"
    shutil.rmtree(directory)
    with caplog.at_level(logging.WARNING, logger="datapipelines.sinks.disk"):
        pipeline.get(Reading, {"id": 2})
    assert "found its database removed or replaced; reopened it" in caplog.text
    assert read_in_another_process(directory, 2) == "Reading(id=2, value='v1')"
    assert tier(pipeline, store)["errors"] == 0


def test_a_removed_directory_is_noticed_on_the_default_schedule(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    store = DiskStore(directory, check_every=0.05)
    store.store_many(Reading, [({"id": 1}, Reading(1, "old"))])
    shutil.rmtree(directory)
    # Until the check runs, the deleted file still answers; then the reopened database misses.
    wait_until(
        lambda: store.lookup(Reading, {"id": 1}) is MISSING and (directory / diskcache.core.DBNAME).exists(),
        timeout=10,
        what="the store to reopen its removed directory",
    )
    store.store_many(Reading, [({"id": 2}, Reading(2, "new"))])
    assert read_in_another_process(directory, 2) == "Reading(id=2, value='new')"


def test_a_directory_that_cannot_be_recreated_fails_the_tier_visibly(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    store = DiskStore(directory, check_every=0)
    pipeline, source = disk_pipeline(store, failures=3)
    pipeline.get(Reading, {"id": 1})
    shutil.rmtree(directory)
    directory.write_text("a file where the cache directory was")
    with pytest.raises(DiskStoreError, match=f"cannot open '{directory}'"):
        store.lookup(Reading, {"id": 1})
    assert pipeline.get(Reading, {"id": 1}) == Reading(1, "v1")  # the source answers
    assert tier(pipeline, store)["errors"] == 1
    directory.unlink()
    pipeline.get(Reading, {"id": 2})  # the directory can be made again: the store comes back
    assert store.lookup(Reading, {"id": 2}) == Reading(2, "v1")


# -- a real read-only filesystem -----------------------------------------------------------------
def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=30)


@pytest.fixture
def bind_mount(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A bind mount of a fresh directory, and a function that remounts it read-only."""
    source, view = tmp_path / "source", tmp_path / "view"
    source.mkdir()
    view.mkdir()
    mounted = _run("mount", "--bind", str(source), str(view))
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")

    def make_read_only() -> None:
        done = _run("mount", "-o", "remount,bind,ro", str(view))
        assert done.returncode == 0, f"remount read-only failed: {done.stderr}"

    try:
        yield view, make_read_only
    finally:
        _run("umount", "-l", str(view))


def test_opening_a_disk_store_on_a_read_only_filesystem_names_the_directory(
    bind_mount: tuple[Path, Callable[[], None]],
) -> None:
    view, make_read_only = bind_mount
    DiskStore(view / "existing").close()
    make_read_only()
    for directory in (view / "new", view / "existing"):
        with pytest.raises(DiskStoreError, match=f"cannot open '{directory}': the filesystem is read-only"):
            DiskStore(directory)


def test_a_filesystem_turning_read_only_costs_bounded_time_is_counted_and_skipped(
    bind_mount: tuple[Path, Callable[[], None]],
) -> None:
    view, make_read_only = bind_mount
    store = DiskStore(view / "cache", timeout=0.5)
    pipeline, source = disk_pipeline(store)
    pipeline.get(Reading, {"id": 1})
    store.close()  # no open files, so the mount may turn read-only; the store reconnects on next use
    make_read_only()
    for n in range(2, 8):
        assert finishes(lambda n=n: pipeline.get(Reading, {"id": n})) == Reading(n, "v1")
    state = tier(pipeline, store)
    assert (state["errors"], state["breaker"]) == (2, "open")
    assert state["skips"] >= 4
    error = finishes(lambda: _raises(lambda: store.store_many(Reading, [({"id": 9}, Reading(9, "x"))])))
    assert isinstance(error, DiskStoreError) and "the filesystem is read-only" in str(error)


@pytest.fixture
def ext4_loop(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A small ext4 on a loop device, mounted errors=remount-ro, and a function that makes the
    kernel record a filesystem error, which turns it read-only under open files."""
    image, mountpoint = tmp_path / "fs.img", tmp_path / "fs"
    mountpoint.mkdir()
    with open(image, "wb") as file:
        file.truncate(16 * 2**20)
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed (e2fsprogs)")
    made = _run("mkfs.ext4", "-q", "-F", str(image))
    mounted = _run("mount", "-o", "loop,errors=remount-ro", str(image), str(mountpoint))
    if made.returncode or mounted.returncode:
        pytest.skip(f"cannot loop-mount an ext4 here: {made.stderr.strip()} {mounted.stderr.strip()}")
    device = _run("findmnt", "-n", "-o", "SOURCE", str(mountpoint)).stdout.strip()
    trigger = Path("/sys/fs/ext4") / os.path.basename(device) / "trigger_fs_error"

    def fail_the_filesystem() -> None:
        trigger.write_text("datapipelines test\n")

    try:
        if not trigger.exists():
            pytest.skip(f"the kernel has no {trigger}")
        yield mountpoint, fail_the_filesystem
    finally:
        _run("umount", "-l", str(mountpoint))


def test_an_ext4_turning_read_only_under_open_files_never_hangs_a_get(
    ext4_loop: tuple[Path, Callable[[], None]],
) -> None:
    mountpoint, fail_the_filesystem = ext4_loop
    store = DiskStore(mountpoint / "cache", timeout=0.5)
    pipeline, _ = disk_pipeline(store, failures=3)
    pipeline.get(Reading, {"id": 1})
    fail_the_filesystem()
    # Each thread has its own SQLite connection: new ones open on the read-only filesystem.
    for n in range(2, 10):
        assert finishes(lambda n=n: pipeline.get(Reading, {"id": n})) == Reading(n, "v1")
    state = tier(pipeline, store)
    assert (state["errors"], state["breaker"]) == (3, "open")
    error = finishes(lambda: _raises(lambda: store.store_many(Reading, [({"id": 9}, Reading(9, "x"))])))
    # The kernel flags the filesystem read-only in its own way; SQLite says it plainly.
    assert isinstance(error, DiskStoreError) and "readonly database" in str(error)
