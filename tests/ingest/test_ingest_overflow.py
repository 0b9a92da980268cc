"""50,000 files against the default inotify queue: the overflow is seen, a rescan recovers every file."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datapipelines import DataPipeline
from datapipelines.ingest import DirectoryListener, FailurePolicy, Ingest, Router, Rule, Step
from tests.support import ingest as ingest_support

pytestmark = pytest.mark.timeout(240)

TOTAL = 50_000
# Renames from a folder beside the watched one: the fastest arrival there is (one IN_MOVED_TO each).
SENDER = """
import os, sys
staging, folder = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(staging)):
    os.rename(os.path.join(staging, name), os.path.join(folder, name))
"""


def test_an_inotify_overflow_is_counted_and_every_file_processed_exactly_once(tmp_path: Path) -> None:
    queue_size = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    assert queue_size < TOTAL  # the test means nothing on a machine with a bigger queue
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    step = Step("slow", ingest_support.sleep_1ms, workers=4, failure=FailurePolicy.keep(tmp_path / "trash"))
    pipeline = DataPipeline([Router([Rule.always(step)], no_match=FailurePolicy.delete())])
    listener = DirectoryListener(incoming)  # kernel default queue, default max_in_flight and rescan period
    staging = tmp_path / "staging"
    staging.mkdir()
    for index in range(TOTAL):
        fd = os.open(staging / f"n{index:05d}", os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, b"n")
        os.close(fd)
    with Ingest(pipeline, listener) as ingest:
        subprocess.run([sys.executable, "-c", SENDER, str(staging), str(incoming)], check=True, timeout=120)
        written = time.monotonic()
        assert ingest.wait_idle(200)
        print(f"drained {time.monotonic() - written:.1f} s after the writer finished")
        stats = pipeline.stats()["ingest"]
    listened = stats["listeners"]["incoming"]
    assert listened["overflows"] >= 1 and listened["rescans"] >= 2  # the start scan, then the recovery
    assert listened["claimed"] == TOTAL
    slow = stats["steps"]["slow"]
    assert (slow["processed"], slow["succeeded"], slow["failed"], slow["restarts"]) == (TOTAL, TOTAL, 0, 0)
    assert os.listdir(incoming) == [".work"]
    assert not (tmp_path / "trash").exists()
