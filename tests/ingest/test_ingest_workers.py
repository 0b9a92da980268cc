"""Steps in worker processes: SIGKILLed workers lose nothing, SIGTERM finishes the file in hand, poison."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from datapipelines import DataPipeline
from datapipelines.ingest import (
    ArchiveSink,
    BatchPolicy,
    DirectoryListener,
    FailurePolicy,
    Ingest,
    Router,
    Rule,
    Step,
)
from tests.support import ingest as ingest_support
from tests.support.ingest import drop, files_under, wait_for

pytestmark = pytest.mark.timeout(150)


def build(tmp_path: Path, step: Step) -> tuple[DataPipeline, DirectoryListener]:
    (tmp_path / "incoming").mkdir()
    router = Router([Rule.always(step)], no_match=FailurePolicy.delete())
    return DataPipeline([router]), DirectoryListener(tmp_path / "incoming", settle=0.1)


def test_sigkill_a_worker_three_times_during_20000_files(tmp_path: Path) -> None:
    archive = ArchiveSink(tmp_path / "archive", "{original_basename}")
    step = Step(
        "work", ingest_support.no_op, workers=2, then=archive, failure=FailurePolicy.keep(tmp_path / "trash")
    )
    pipeline, listener = build(tmp_path, step)
    staging = tmp_path / "staging"
    staging.mkdir()
    total = 20_000
    payload = b"k" * 1024
    for index in range(total):
        (staging / f"f{index:05d}").write_bytes(payload)

    def arrive() -> None:
        for index in range(total):
            os.rename(staging / f"f{index:05d}", tmp_path / "incoming" / f"f{index:05d}")

    with Ingest(pipeline, listener) as ingest:
        sender = threading.Thread(target=arrive)
        sender.start()
        kills = 0
        for threshold in (2_000, 7_000, 12_000):
            wait_for(lambda t=threshold: step.report()["succeeded"] >= t, timeout=60)  # type: ignore[misc]
            os.kill(step.worker_pids[0], signal.SIGKILL)
            kills += 1
            wait_for(lambda k=kills: step.report()["restarts"] >= k, timeout=30)  # type: ignore[misc]
        sender.join()
        assert ingest.wait_idle(90)
        stats = pipeline.stats()["ingest"]

    archived = sorted(p.name for p in (tmp_path / "archive").iterdir() if p.is_file())
    assert archived == sorted([f"f{i:05d}" for i in range(total)] + [f"f{i:05d}.tags" for i in range(total)])
    for index in range(0, total, 997):  # every sidecar is whole JSON naming its file
        tags = json.loads((tmp_path / "archive" / f"f{index:05d}.tags").read_text())
        assert tags["first.core.original_basename"] == f"f{index:05d}"
    assert all((tmp_path / "archive" / f"f{i:05d}").stat().st_size == 1024 for i in range(0, total, 101))
    assert [p.name for p in files_under(Path(listener.work))] == [".status.json"]
    assert not (tmp_path / "archive" / ".partial").exists()  # no temporary debris
    assert not (tmp_path / "trash").exists()
    assert os.listdir(tmp_path / "incoming") == [".work"]
    work = stats["steps"]["work"]
    assert work["restarts"] == 3 and work["reprocessed"] >= 1 and work["dead"] == 0
    assert stats["steps"]["archive"]["archived"] >= total and stats["steps"]["archive"]["collisions"] == 0


def test_sigterm_lets_a_worker_finish_its_file_and_hands_the_rest_back(tmp_path: Path) -> None:
    step = Step("slow", ingest_support.slow, workers=1, failure=FailurePolicy.keep(tmp_path / "trash"))
    pipeline, listener = build(tmp_path, step)
    with Ingest(pipeline, listener) as ingest:
        for index in range(6):
            drop(tmp_path / "incoming", f"s{index}")
        wait_for(lambda: step._queue is not None and step._queue.busy() >= 3)
        time.sleep(0.1)  # the worker is inside its first file
        os.kill(step.worker_pids[0], signal.SIGTERM)
        assert ingest.wait_idle(30)
        report = step.report()
    # The file in hand completed; the ones it had not started ran once each in the replacement.
    assert (report["processed"], report["succeeded"], report["failed"], report["restarts"]) == (6, 6, 0, 1)


def test_a_file_that_kills_its_worker_is_given_up_after_max_deliveries(tmp_path: Path) -> None:
    step = Step(
        "fragile",
        ingest_support.die_on_poison,
        workers=1,
        max_deliveries=3,
        failure=FailurePolicy.keep(tmp_path / "trash"),
    )
    pipeline, listener = build(tmp_path, step)
    with Ingest(pipeline, listener) as ingest:
        drop(tmp_path / "incoming", "poison.bin")
        for index in range(5):
            drop(tmp_path / "incoming", f"fine{index}")
        assert ingest.wait_idle(60)
        report = step.report()
    assert report["succeeded"] == 5 and report["dead"] == 1 and report["restarts"] >= 3
    sidecar = next(p for p in files_under(tmp_path / "trash") if p.name.endswith(".tags"))
    assert "worker died 3 times" in json.loads(sidecar.read_text())["latest.core.reason"]


@pytest.mark.parametrize("workers", [0, 1])
def test_a_batch_step_gets_lists_and_answers_per_file(tmp_path: Path, workers: int) -> None:
    step = Step(
        "batch",
        ingest_support.batch_of_flags,
        batch=BatchPolicy(max_size=4, max_wait=0.2),
        workers=workers,
        failure=FailurePolicy.keep(tmp_path / "trash"),
    )
    pipeline, listener = build(tmp_path, step)
    with Ingest(pipeline, listener) as ingest:
        for index in range(10):
            drop(tmp_path / "incoming", f"good{index}")
        drop(tmp_path / "incoming", "bad-one")
        assert ingest.wait_idle(30)
        report = step.report()
    assert (report["succeeded"], report["dead"]) == (10, 1)
    assert [p.name.split("__")[1] for p in files_under(tmp_path / "trash") if "tags" not in p.name] == [
        "bad-one"
    ]
