"""Step batches in worker processes over Redis Streams: files flow, a SIGKILL loses none, poison."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from datapipelines import DataPipeline
from datapipelines.ingest import ArchiveSink, DirectoryListener, FailurePolicy, Ingest, Router, Rule, Step
from datapipelines.ingest.redis_workers import RedisWorkQueue
from tests.support import ingest as ingest_support
from tests.support.ingest import drop, files_under, wait_for

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pid_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "pids"
    folder.mkdir()
    monkeypatch.setenv("DP_TEST_PID_DIR", str(folder))
    return folder


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as connection:
        yield connection


def distributed(
    tmp_path: Path, redis_url: str, prefix: str, function: object, **options: object
) -> tuple[DataPipeline, DirectoryListener, Step, RedisWorkQueue]:
    (tmp_path / "incoming").mkdir()
    queue = RedisWorkQueue(redis_url, "parse", function, prefix=prefix, lease=1.0, max_deliveries=3)  # type: ignore[arg-type]
    archive = ArchiveSink(tmp_path / "archive", "{original_basename}")
    step = Step(
        "parse",
        function,  # type: ignore[arg-type]
        queue=queue,
        max_deliveries=3,
        then=archive,
        failure=FailurePolicy.keep(tmp_path / "trash"),
        **options,  # type: ignore[arg-type]
    )
    router = Router([Rule.always(step)], no_match=FailurePolicy.delete())
    return DataPipeline([router]), DirectoryListener(tmp_path / "incoming", settle=0.1), step, queue


def archived(tmp_path: Path) -> list[str]:
    return sorted(
        p.name for p in (tmp_path / "archive").iterdir() if p.is_file() and not p.name.endswith(".tags")
    )


def assert_redis_is_clear(client: redis.Redis, queue: RedisWorkQueue) -> None:
    assert queue.queue.outstanding() == 0
    assert client.xpending(queue.queue.stream, queue.queue.group)["pending"] == 0


def test_files_flow_through_two_worker_processes(
    tmp_path: Path, redis_url: str, redis_namespace: str, client: redis.Redis, pid_dir: Path
) -> None:
    pipeline, listener, step, queue = distributed(
        tmp_path, redis_url, redis_namespace, ingest_support.note_pid
    )
    names = [f"f{i:04d}" for i in range(300)]
    with Ingest(pipeline, listener) as ingest:
        wait_for(lambda: len(step.worker_pids) == 2)
        for name in names:
            drop(tmp_path / "incoming", name)
        assert ingest.wait_idle(60)
        assert_redis_is_clear(client, queue)
        workers = set(step.worker_pids)
    assert archived(tmp_path) == names
    tags = json.loads((tmp_path / "archive" / "f0007.tags").read_text())
    assert tags["first.core.original_basename"] == "f0007"
    ran = {int(p.name): p.read_text().split() for p in pid_dir.iterdir()}
    assert set(ran) == workers  # both worker processes took files, and nothing else ran the step
    assert sorted(n for files in ran.values() for n in files) == names  # each file ran once
    assert [p.name for p in files_under(Path(listener.work))] == [".status.json"]


def test_a_worker_killed_mid_run_loses_no_file(
    tmp_path: Path, redis_url: str, redis_namespace: str, client: redis.Redis, pid_dir: Path
) -> None:
    pipeline, listener, step, queue = distributed(
        tmp_path, redis_url, redis_namespace, ingest_support.note_pid
    )
    names = [f"k{i:04d}" for i in range(400)]
    with Ingest(pipeline, listener) as ingest:
        wait_for(lambda: len(step.worker_pids) == 2)
        for name in names[:200]:
            drop(tmp_path / "incoming", name)
        wait_for(lambda: len(list(pid_dir.iterdir())) == 2)  # both are working
        victim = step.worker_pids[0]
        os.kill(victim, signal.SIGKILL)
        for name in names[200:]:
            drop(tmp_path / "incoming", name)
        wait_for(lambda: queue.restarts == 1)
        assert ingest.wait_idle(60)
        assert_redis_is_clear(client, queue)
        assert victim not in step.worker_pids
    assert archived(tmp_path) == names  # every file archived, once (the archive refuses a second copy)
    assert not (tmp_path / "trash").exists()


def test_a_file_that_kills_every_worker_is_given_up_after_max_deliveries(
    tmp_path: Path, redis_url: str, redis_namespace: str, client: redis.Redis
) -> None:
    pipeline, listener, step, queue = distributed(
        tmp_path, redis_url, redis_namespace, ingest_support.die_on_poison
    )
    fine = [f"fine{i}" for i in range(20)]
    with Ingest(pipeline, listener) as ingest:
        drop(tmp_path / "incoming", "poison.bin")
        for name in fine:
            drop(tmp_path / "incoming", name)
        assert ingest.wait_idle(60)
        report = step.report()
        assert_redis_is_clear(client, queue)
    assert archived(tmp_path) == sorted(fine)
    [letter] = queue.queue.dead_letters()
    assert letter["deliveries"] == "3"
    kept = [p.name for p in (tmp_path / "trash").iterdir()]
    assert any(name.endswith("__poison.bin") for name in kept)
    assert report["dead"] == 1 and queue.restarts == 3


ORPHAN = """
import sys, time
from datapipelines.ingest.redis_workers import RedisWorkQueue
from tests.support import ingest as ingest_support
queue = RedisWorkQueue(sys.argv[1], "parse", ingest_support.no_op, prefix=sys.argv[2], workers=1)
queue.start()
print(queue.pids[0], flush=True)
time.sleep(60)
"""


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_local_workers_end_when_the_step_process_is_killed(redis_url: str, redis_namespace: str) -> None:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    owner = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, redis_url, redis_namespace],
        stdout=subprocess.PIPE,
        text=True,
        env=environment,
    )
    try:
        assert owner.stdout is not None
        worker = int(owner.stdout.readline())
        assert running(worker)
    finally:
        owner.kill()
        owner.wait(10)
    wait_for(lambda: not running(worker), timeout=20)
