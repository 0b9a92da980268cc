"""DirectoryListener on real files: complete files only, settle on rescans, hostile entries, back-pressure."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from datapipelines import DataPipeline
from datapipelines.errors import ConfigurationError
from datapipelines.ingest import (
    ArchiveSink,
    DirectoryListener,
    FailurePolicy,
    IncomingFile,
    Ingest,
    Router,
    Rule,
    Step,
)
from tests.support.ingest import drop, wait_for

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A step function that remembers the size and content length of every file it saw."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, file: IncomingFile) -> None:
        data = file.read_bytes()
        with self.lock:
            self.seen.append((file.name, file.size, len(data)))


def setup(tmp_path: Path, **listener_options: object) -> tuple[DataPipeline, DirectoryListener, Recorder]:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    recorder = Recorder()
    step = Step("record", recorder, failure=FailurePolicy.keep(tmp_path / "trash"))
    router = Router([Rule.always(step)], no_match=FailurePolicy.delete())
    return DataPipeline([router]), DirectoryListener(incoming, **listener_options), recorder  # type: ignore[arg-type]


def test_a_file_written_in_place_in_chunks_is_taken_once_after_close_and_whole(tmp_path: Path) -> None:
    pipeline, listener, recorder = setup(tmp_path, settle=0.3)
    chunk = b"z" * 2**20
    with Ingest(pipeline, listener) as ingest:
        with open(tmp_path / "incoming" / "big.bin", "wb") as handle:
            for _ in range(5):  # 5 MB over about 5 s, under its final name
                handle.write(chunk)
                handle.flush()
                time.sleep(1.0)
                assert recorder.seen == []
        wait_for(lambda: recorder.seen)
        assert ingest.wait_idle(10)
    assert recorder.seen == [("big.bin", 5 * 2**20, 5 * 2**20)]


def test_write_then_rename_is_taken_once(tmp_path: Path) -> None:
    pipeline, listener, recorder = setup(tmp_path)
    with Ingest(pipeline, listener) as ingest:
        for extension in ("tmp", "t", "part"):
            temporary = tmp_path / "incoming" / f"data-{extension}.{extension}"
            temporary.write_bytes(b"12345")
            time.sleep(0.3)  # a temporary name is never taken, however long it sits there
            os.rename(temporary, tmp_path / "incoming" / f"data-{extension}.csv")
        assert ingest.wait_idle(10)
        stats = pipeline.stats()["ingest"]["listeners"]["incoming"]
    assert sorted(recorder.seen) == [(f"data-{e}.csv", 5, 5) for e in ("part", "t", "tmp")]
    assert stats["claimed"] == 3


def test_a_growing_file_found_by_a_rescan_waits_until_it_is_stable(tmp_path: Path) -> None:
    pipeline, listener, recorder = setup(tmp_path, settle=1.0, poll=0.1)  # polling: every take is a scan
    path = tmp_path / "incoming" / "growing.log"
    with Ingest(pipeline, listener) as ingest:
        with open(path, "ab") as handle:
            for _ in range(12):  # appends every 0.2 s for 2.4 s: never still for a whole second
                handle.write(b"line\n")
                handle.flush()
                os.utime(path)
                last_write = time.monotonic()
                time.sleep(0.2)
                assert recorder.seen == []
        wait_for(lambda: recorder.seen)
        assert time.monotonic() - last_write >= 0.9
        assert ingest.wait_idle(10)
        assert pipeline.stats()["ingest"]["listeners"]["incoming"]["rescans"] > 5
    assert recorder.seen == [("growing.log", 60, 60)]


def test_files_present_before_the_start_are_taken_by_the_first_scan(tmp_path: Path) -> None:
    pipeline, listener, recorder = setup(tmp_path, settle=0.1)
    for index in range(20):
        (tmp_path / "incoming" / f"old{index}").write_bytes(b"o")
    past = time.time() - 10
    for index in range(20):
        os.utime(tmp_path / "incoming" / f"old{index}", (past, past))
    with Ingest(pipeline, listener) as ingest:
        assert ingest.wait_idle(10)
    assert sorted(n for n, _, _ in recorder.seen) == sorted(f"old{i}" for i in range(20))


def test_hostile_entries_never_stop_the_listener(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("do not take me")
    archive = ArchiveSink(tmp_path / "archive", "{original_basename}")
    pipeline = DataPipeline([Router([Rule.always(archive)], no_match=FailurePolicy.delete())])
    listener = DirectoryListener(incoming, settle=0.1, rescan_every=0.3)
    with Ingest(pipeline, listener) as ingest:
        locked = incoming / ".locked.bin.part"
        locked.write_bytes(b"private")
        os.chmod(locked, 0)  # unreadable before it arrives
        os.rename(locked, incoming / "locked.bin")
        drop(incoming, "two\nlines.txt", b"nl")
        drop(incoming, os.fsdecode(b"bad-\xff\xfe.txt"), b"latin")
        drop(incoming, "empty", b"")
        (incoming / "a-folder").mkdir()
        (incoming / "a-folder" / "inside.txt").write_text("left alone")
        os.symlink(outside, incoming / "link-out")
        drop(incoming, "after.txt", b"still running")
        rescans = listener.report()["rescans"]
        wait_for(lambda: listener.report()["rescans"] >= rescans + 2)  # scans meet the folder and the link
        assert ingest.wait_idle(10)
        stats = pipeline.stats()["ingest"]["listeners"]["incoming"]
    names = sorted(
        os.fsencode(p.name)
        for p in (tmp_path / "archive").iterdir()
        if p.is_file() and not p.name.endswith(".tags")
    )
    # Unreadable, newline, invalid UTF-8 and empty files are archived like any other, with their tags.
    assert names == sorted([b"after.txt", b"bad-\xff\xfe.txt", b"empty", b"locked.bin", b"two\nlines.txt"])
    tags = json.loads((tmp_path / "archive" / (os.fsdecode(b"bad-\xff\xfe.txt") + ".tags")).read_text())
    assert os.fsencode(tags["first.core.original_basename"]) == b"bad-\xff\xfe.txt"
    assert (tmp_path / "archive" / "empty").stat().st_size == 0
    # A folder and a symlink are ignored: left where they are, never followed.
    assert sorted(os.listdir(incoming)) == [".work", "a-folder", "link-out"]
    assert (incoming / "a-folder" / "inside.txt").read_text() == "left alone"
    assert outside.read_text() == "do not take me" and not (tmp_path / "archive" / "link-out").exists()
    assert stats["ignored"] >= 2 and stats["claimed"] == 5
    assert ingest._housekeeper is None  # stopped cleanly, no crash


def test_back_pressure_pauses_claiming_and_resumes(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    gate = threading.Event()
    step = Step("stalled", lambda f: gate.wait(30), failure=FailurePolicy.delete())
    pipeline = DataPipeline([Router([Rule.always(step)], no_match=FailurePolicy.delete())])
    listener = DirectoryListener(incoming, max_in_flight=10, settle=0.05)
    with Ingest(pipeline, listener) as ingest:
        for index in range(50):
            drop(incoming, f"f{index}")
        wait_for(lambda: listener.report()["paused_now"])
        time.sleep(0.3)
        assert ingest.in_flight() <= 11  # the limit, plus the one that crossed it
        assert len([n for n in os.listdir(incoming) if n.startswith("f")]) >= 39
        gate.set()
        assert ingest.wait_idle(20)
        stats = pipeline.stats()["ingest"]
    assert stats["listeners"]["incoming"]["paused"] >= 1
    assert stats["listeners"]["incoming"]["claimed"] == 50
    assert stats["steps"]["stalled"]["succeeded"] == 50


def test_a_free_disk_floor_pauses_claiming(tmp_path: Path) -> None:
    pipeline, listener, recorder = setup(tmp_path, min_free_bytes=2**62)
    with Ingest(pipeline, listener):
        drop(tmp_path / "incoming", "waiting")
        wait_for(lambda: listener.report()["paused_now"])
        time.sleep(0.3)
        assert recorder.seen == [] and (tmp_path / "incoming" / "waiting").exists()
        listener.min_free_bytes = 1
        wait_for(lambda: recorder.seen)


def test_bad_listener_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="is not a folder"):
        DirectoryListener(tmp_path / "missing")


def test_a_scan_never_takes_a_file_still_open_for_writing_even_after_a_long_pause(tmp_path: Path) -> None:
    pipeline, listener, recorder = setup(tmp_path, settle=0.2, rescan_every=0.1)  # scans all the time
    path = tmp_path / "incoming" / "paused.bin"
    with Ingest(pipeline, listener) as ingest:
        with open(path, "wb") as handle:
            handle.write(b"a" * 1000)
            handle.flush()
            time.sleep(1.0)  # five times settle: only the open file says it is not done
            assert recorder.seen == []
            handle.write(b"b" * 1000)
        wait_for(lambda: recorder.seen)
        assert ingest.wait_idle(10)
    assert recorder.seen == [("paused.bin", 2000, 2000)]


def test_without_inotify_simple_the_listener_polls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datapipelines.ingest.listener as listener_module

    monkeypatch.setattr(listener_module, "inotify_simple", None)
    pipeline, listener, recorder = setup(tmp_path, settle=0.1)
    assert listener.poll == 1.0
    with Ingest(pipeline, listener) as ingest:
        drop(tmp_path / "incoming", "polled.txt", b"p")
        wait_for(lambda: recorder.seen, timeout=10)
        assert ingest.wait_idle(10)
    assert recorder.seen == [("polled.txt", 1, 1)]
