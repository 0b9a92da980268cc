"""Distributed steps: the engine seam, idempotent redelivery, retries in the delay set, reconcile after
FLUSHALL, the worker / status / dead commands and their errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from datapipelines import DataPipeline
from datapipelines.errors import ConfigurationError
from datapipelines.extras import MissingExtraError
from datapipelines.ingest import (
    ArchivedFile,
    ArchiveSink,
    DirectoryListener,
    FailurePolicy,
    Ingest,
    Router,
    Rule,
)
from datapipelines.ingest import distributed as distributed_module
from datapipelines.ingest.config import load_config
from datapipelines.ingest.distributed import DistributedStep, StepWorker
from datapipelines.ingest.redis_queue import RedisStreamQueue
from datapipelines.ingest.stream_queue import open_stream_queue
from datapipelines.sinks.catalog import Catalog
from tests.support import distributed as distributed_support
from tests.support.distributed import calls, environment, start_cli, stop, write_config
from tests.support.ingest import drop, files_under, wait_for
from tests.support.resilience import RedisServer, private_redis  # noqa: F401  (a fixture)

pytestmark = pytest.mark.timeout(180)


def archived(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.endswith(".tags"))


# -- the engine seam -------------------------------------------------------------------------------
def test_the_url_scheme_picks_the_engine(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    queue = open_stream_queue(redis_url, "parse", prefix="p", lease=3.0, max_deliveries=2)
    assert isinstance(queue, RedisStreamQueue)
    assert (queue.stream, queue.lease_ms, queue.max_deliveries) == ("p:parse", 3000, 2)
    queue.close()
    with pytest.raises(ConfigurationError, match=r"unknown scheme 'amqp'; use one of redis://, rediss://"):
        open_stream_queue("amqp://127.0.0.1", "parse")

    opened = []

    class NatsStreamQueue:
        @classmethod
        def from_url(cls, url: str, step: str, **options: object) -> str:
            opened.append((url, step, options))
            return "nats queue"

    engine = types.ModuleType("datapipelines.ingest.nats_queue")
    engine.NatsStreamQueue = NatsStreamQueue  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datapipelines.ingest.nats_queue", engine)
    assert open_stream_queue("nats://127.0.0.1:4222", "parse", lease=2.0) == "nats queue"
    assert opened == [("nats://127.0.0.1:4222", "parse", {"lease": 2.0})]

    monkeypatch.setitem(sys.modules, "datapipelines.ingest.nats_queue", None)  # not installed
    with pytest.raises(MissingExtraError, match="NATS JetStream engine"):
        open_stream_queue("nats://127.0.0.1:4222", "parse")


# -- in one process: a listening side and a worker ---------------------------------------------------
@pytest.fixture
def calls_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "calls.txt"
    monkeypatch.setenv("DP_TEST_CALLS", str(path))
    return path


def build(
    tmp_path: Path, url: str, prefix: str, function: object, **options: object
) -> tuple[Ingest, DistributedStep, ArchiveSink, Catalog]:
    (tmp_path / "incoming").mkdir(exist_ok=True)
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}", types=[ArchivedFile])
    archive = ArchiveSink(tmp_path / "archive", "{original_basename}", catalog=catalog)
    step = DistributedStep(
        "parse",
        function,  # type: ignore[arg-type]
        url=url,
        prefix=prefix,
        lease=0.5,
        then=archive,
        failure=FailurePolicy.keep(tmp_path / "trash"),
        **options,  # type: ignore[arg-type]
    )
    pipeline = DataPipeline([Router([Rule.always(step)], no_match=FailurePolicy.delete())])
    return Ingest(pipeline, DirectoryListener(tmp_path / "incoming", settle=0.05)), step, archive, catalog


def worker_for(step: DistributedStep, consumer: str) -> StepWorker:
    """A worker with its own copy of the step, as another process would have."""
    twin = DistributedStep(
        step.name, step.function, url=step.url, then=step.then, failure=step.failure, retry=step.retry,
        **{k: v for k, v in step.queue_options.items() if k != "max_deliveries"},
    )  # fmt: skip
    return StepWorker(twin, consumer=consumer)


def test_a_redelivered_file_yields_the_same_archive_path_tags_and_one_catalogue_row(
    tmp_path: Path, redis_url: str, redis_namespace: str, calls_file: Path
) -> None:
    ingest, step, archive, catalog = build(tmp_path, redis_url, redis_namespace, distributed_support.record)
    with ingest:
        drop(tmp_path / "incoming", "report.csv", b"id,x\n")
        assert step.stream is not None
        wait_for(lambda: step.stream.outstanding() == 1)  # type: ignore[union-attr]
        [payload] = step.stream.waiting()
        work_copy = Path(json.loads(payload)["path"])
        assert (
            work_copy.parent.name == "parse"
            and (work_copy.parent / (json.loads(payload)["uid"] + ".tags")).exists()
        )

        first = worker_for(step, "first")
        first.step.stream = open_stream_queue(
            redis_url, "parse", prefix=redis_namespace, consumer="first", lease=0.5
        )
        first.step.stream.ack = lambda *ids: None  # type: ignore[method-assign]  # dies before acknowledging
        assert first.run_once() == 1
        path = tmp_path / "archive" / "report.csv"
        tags_before = (tmp_path / "archive" / "report.csv.tags").read_text()
        # ... after archiving and before the work copy went: put it back as the crash left it.
        os.link(path, work_copy)

        second = worker_for(step, "second")
        second.run(until=lambda: step.stream.outstanding() == 0)  # type: ignore[union-attr]
        assert ingest.wait_idle(20)

    assert archived(tmp_path / "archive") == ["report.csv"]  # the same path, no uid-suffixed second copy
    assert (tmp_path / "archive" / "report.csv.tags").read_text() == tags_before
    assert second.step.report()["reprocessed"] == 1 and archive.report()["redone"] == 1
    assert catalog.count() == 1
    assert [uid for uid, *_ in calls(calls_file)] == [json.loads(payload)["uid"]] * 2
    assert files_under(Path(ingest.listeners[0].work)) == [Path(ingest.listeners[0].work) / ".status.json"]
    catalog.close()


def test_retries_wait_in_the_engines_delay_set_not_in_the_listening_process(
    tmp_path: Path, redis_url: str, redis_namespace: str, calls_file: Path, redis_client: redis.Redis
) -> None:
    from datapipelines.ingest import RetryPolicy

    retry = RetryPolicy(total=3, min_wait=0.3, max_wait=0.3, backoff=0)
    ingest, step, _archive, catalog = build(
        tmp_path, redis_url, redis_namespace, distributed_support.fail_twice_on_bad, retry=retry
    )
    with ingest:
        drop(tmp_path / "incoming", "bad.csv")
        wait_for(lambda: step.stream.outstanding() == 1)  # type: ignore[union-attr]
    # The listening side is gone: what follows happens between the engine and a worker alone.
    worker = worker_for(step, "only")
    delayed_key = f"{redis_namespace}:parse:delayed"
    seen_delayed = []
    thread = threading.Thread(
        target=worker.run, kwargs={"until": lambda: (tmp_path / "archive" / "bad.csv").exists()}
    )
    thread.start()
    while thread.is_alive():
        seen_delayed.append(redis_client.zcard(delayed_key))
        time.sleep(0.02)
    thread.join()
    report = worker.step.report()
    assert (report["failed"], report["retried"], report["succeeded"]) == (2, 2, 1)
    assert 1 in seen_delayed  # the retry waited in the sorted set
    tags = json.loads((tmp_path / "archive" / "bad.csv.tags").read_text())
    assert tags["latest.core.attempt"] == "3" and tags["latest.core.error"].startswith(
        "ValueError: attempt 2"
    )
    starts = [started for *_, started, _ in calls(calls_file)]
    assert len(starts) == 3
    assert all(later - earlier >= 0.28 for earlier, later in zip(starts, starts[1:], strict=False))
    catalog.close()


def test_reconcile_publishes_files_whose_entries_a_flushall_took(
    tmp_path: Path,
    private_redis: RedisServer,  # noqa: F811
    calls_file: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(distributed_module, "RECONCILE_GRACE", 0.0)
    ingest, step, _archive, catalog = build(tmp_path, private_redis.url, "dp", distributed_support.record)
    names = [f"f{i:03d}" for i in range(60)]
    with ingest:
        for name in names:
            drop(tmp_path / "incoming", name)
        wait_for(lambda: step.stream.outstanding() == 60)  # type: ignore[union-attr]
        assert ingest.reconcile() == 0  # every file has its entry: nothing to do
        with redis.Redis.from_url(private_redis.url) as client:
            client.flushall()
        assert ingest.reconcile() == 60
        wait_for(lambda: step.stream.outstanding() == 60)  # type: ignore[union-attr]
        assert ingest.report()["reprocessed"] == 60 and step.report()["reprocessed"] == 60
        worker = worker_for(step, "w")
        worker.run(until=lambda: step.stream.outstanding() == 0)  # type: ignore[union-attr]
        assert ingest.wait_idle(20)
    assert archived(tmp_path / "archive") == names
    assert sorted(uid for uid, *_ in calls(calls_file)) == sorted({uid for uid, *_ in calls(calls_file)})
    catalog.close()


# -- the commands ------------------------------------------------------------------------------------
def run_cli(
    *arguments: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "datapipelines.cli", *arguments],
        cwd=cwd, env=env or environment(cwd / "calls.txt"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_listener_and_worker_processes_from_one_config(
    tmp_path: Path, redis_url: str, redis_namespace: str
) -> None:
    retry = "retry = { total = 3, min_wait = 0.2, max_wait = 0.2, backoff = 0 }"
    config = write_config(
        tmp_path,
        redis_url,
        redis_namespace,
        "tests.support.distributed:fail_twice_on_bad",
        retry=retry,
        catalog=True,
    )
    names = [f"f{i:03d}.csv" for i in range(200)] + ["bad.csv"]
    for name in names:
        drop(tmp_path / "incoming", name)
    # Made once up front: processes that all create the catalogue's tables at once race each other.
    Catalog(f"sqlite:///{tmp_path / 'catalog.db'}", types=[ArchivedFile]).close()
    env = environment(tmp_path / "calls.txt")
    worker = start_cli(
        ["ingest", "worker", str(config), "--step", "parse", "-n", "2", "--consumer", "box"],
        env,
        tmp_path,
        tmp_path / "worker.log",
    )
    try:
        listened = run_cli("ingest", "run", str(config), "--until-idle", "--timeout", "60", cwd=tmp_path)
        assert listened.returncode == 0, listened.stdout + listened.stderr
        status = run_cli("ingest", "status", str(config), "--json", cwd=tmp_path)
        assert status.returncode == 0, status.stderr
        queues = json.loads(status.stdout)["distributed"]["parse"]
        assert (queues["outstanding"], queues["pending"], queues["delayed"], queues["dead"]) == (0, 0, 0, 0)
        assert {c["name"] for c in queues["consumers"]} == {"box-1", "box-2"}
        table = run_cli("ingest", "status", str(config), cwd=tmp_path)
        assert "distributed step" in table.stdout and "box-2" in table.stdout
    finally:
        assert stop(worker) == 0, (tmp_path / "worker.log").read_text()
    assert archived(tmp_path / "archive") == sorted(names)
    tags = json.loads((tmp_path / "archive" / "f007.csv.tags").read_text())
    assert {"first.core.original_basename", "first.core.original_uid", "first.core.received_at",
            "first.core.original_dirname", "0.parse.enter_step", "latest.core.uid"} <= set(tags)  # fmt: skip
    assert json.loads((tmp_path / "archive" / "bad.csv.tags").read_text())["latest.core.attempt"] == "3"
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}", types=[ArchivedFile])
    assert catalog.count() == len(names)
    catalog.close()
    assert files_under(tmp_path / "incoming") == [tmp_path / "incoming" / ".work" / ".status.json"]


@pytest.fixture
def nowhere() -> Iterator[str]:
    from datapipelines.redis.testing import free_port

    yield f"redis://127.0.0.1:{free_port()}/0"


def test_the_commands_say_what_is_wrong_in_one_line(tmp_path: Path, nowhere: str, redis_url: str) -> None:
    config = write_config(tmp_path, nowhere, "p", "tests.support.distributed:record")
    for arguments in (
        ["ingest", "worker", str(config), "--step", "parse"],
        ["ingest", "status", str(config)],
        ["ingest", "dead", "list", str(config), "--step", "parse"],
        ["ingest", "run", str(config), "--until-idle", "--timeout", "5"],
    ):
        result = run_cli(*arguments, cwd=tmp_path)
        assert result.returncode == 2, (arguments, result.stderr)
        assert "Traceback" not in result.stderr
        [line] = [line for line in result.stderr.splitlines() if line.startswith("datapipelines: error:")]
        assert "cannot" in line and nowhere in line, line
    result = run_cli("ingest", "worker", str(config), "--step", "archive", cwd=tmp_path)
    assert result.returncode == 2 and "no distributed step named 'archive'" in result.stderr
    assert "distributed steps have a queue = ...; here: parse" in result.stderr
    config.write_text(config.read_text().replace(nowhere, "amqp://127.0.0.1"))
    result = run_cli("ingest", "worker", str(config), "--step", "parse", cwd=tmp_path)
    assert (
        result.returncode == 2
        and "step[0].queue.url: 'amqp://127.0.0.1' names no stream engine" in result.stderr
    )
    with pytest.raises(ConfigurationError, match="workers are `datapipelines ingest worker` processes"):
        DistributedStep("parse", distributed_support.record, url=redis_url, workers=2)
    assert isinstance(
        load_config(write_config(tmp_path, redis_url, "p", "tests.support.distributed:record")).targets[
            "parse"
        ],
        DistributedStep,
    )
