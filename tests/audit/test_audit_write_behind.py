"""AuditRecorder(write_behind=True): flush, close, replay, fork, processes, SIGKILL, back-pressure, errors."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest

from datapipelines import DataPipeline
from datapipelines.errors import ConfigurationError
from datapipelines.remote import RawResponse, RemoteSource, request_for, request_id, response_for
from datapipelines.sinks.audit import AuditRecorder, AuditWriteError
from datapipelines.sinks.memory import MemoryStore
from datapipelines.transformers import JSON, RawTransformer
from tests.audit.test_audit_processes import kill_and_check
from tests.support.remote import EchoAdapter

# Long enough that nothing is committed unless a flush, a full queue or the exit asks for it.
NEVER = 3600.0


def answer(name: str, payload: bytes | None = None) -> RawResponse:
    request = request_for({"url": f"mem://{name}"})
    body = payload if payload is not None else f'{{"name": "{name}"}}'.encode()
    return response_for(request, payload=body, status_code=200, content_type="application/json")


def committed(directory) -> list[str]:
    """Request ids of the committed responses, read by a connection of its own."""
    with sqlite3.connect(os.path.join(directory, "audit.sqlite")) as db:
        return [row[0] for row in db.execute("SELECT request_id FROM responses ORDER BY id")]


@pytest.fixture
def behind(tmp_path):
    recorder = AuditRecorder(tmp_path / "audit", write_behind=True, flush_interval=NEVER, max_delay=None)
    yield recorder
    recorder.close()


def test_ids_come_back_at_once_and_records_are_committed_by_flush(behind):
    ids = [behind.record(answer(f"a/{n}")) for n in range(3)]
    assert ids == [request_id({"url": f"mem://a/{n}"}) for n in range(3)]
    assert committed(behind.directory) == [] and behind.pending == 3
    behind.flush()
    assert committed(behind.directory) == ids and behind.pending == 0
    sha256 = hashlib.sha256(b'{"name": "a/0"}').hexdigest()
    assert behind.blobs.path(sha256).read_bytes() == b'{"name": "a/0"}'


def test_the_writer_commits_within_the_flush_interval_without_being_asked(tmp_path):
    with AuditRecorder(tmp_path / "audit", write_behind=True, flush_interval=0.01) as recorder:
        rid = recorder.record(answer("soon"))
        deadline = time.monotonic() + 10
        while not committed(recorder.directory) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert committed(recorder.directory) == [rid]


def test_close_commits_everything_and_ends_the_implicit_session(behind):
    ids = behind.record_many([answer(f"c/{n}") for n in range(5)])
    behind.close()
    assert committed(behind.directory) == ids
    ((ended_at,),) = sqlite3.connect(behind.path).execute("SELECT ended_at FROM sessions").fetchall()
    assert ended_at is not None


def test_replay_in_the_same_process_sees_every_record_without_a_flush(behind):
    pipeline = DataPipeline([MemoryStore(), behind, RemoteSource(EchoAdapter(json=True))], [RawTransformer()])
    query = {"url": "mem://weather/oslo"}
    assert pipeline.get(JSON, query) == {"url": "mem://weather/oslo"}
    assert behind.pending == 1
    offline = DataPipeline([MemoryStore(), behind], [RawTransformer()])
    assert offline.get(JSON, query) == {"url": "mem://weather/oslo"}
    assert behind.get(RawResponse, query).replayed
    with pipeline.session("nightly"):
        pipeline.get(JSON, {"url": "mem://weather/rome"})
    # close_session flushed: the session and its record are in the database for everyone.
    assert len(committed(behind.directory)) == 2
    nightly = behind.find_session("nightly")
    assert nightly["responses"] == 1 and nightly["ended_at"] is not None


def test_a_full_queue_blocks_the_caller_and_drops_nothing(tmp_path):
    recorder = AuditRecorder(
        tmp_path / "audit", write_behind=True, max_pending=3, flush_interval=NEVER, max_delay=None
    )
    ids = []
    for n in range(40):
        ids.append(recorder.record(answer(f"p/{n}")))
        assert recorder.pending <= 3
    recorder.close()
    assert committed(recorder.directory) == ids


def obstruct_blob_folder(recorder: AuditRecorder, payload: bytes):
    """A file where the payload's blob folder should be: its blob cannot be written."""
    folder = recorder.blobs.path(hashlib.sha256(payload).hexdigest()).parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_bytes(b"not a folder")
    return folder


def test_a_writer_error_surfaces_on_flush_and_the_records_are_kept(behind, caplog):
    blocked = answer("blocked")
    folder = obstruct_blob_folder(behind, blocked.payload)
    rid = behind.record(blocked)
    with caplog.at_level(logging.ERROR, logger="datapipelines.sinks.audit"):
        expected = r"1 waiting, kept and retried\): AuditStoreError: Blob folder .*blobs/.. is .*not a dir"
        with pytest.raises(AuditWriteError, match=expected):
            behind.flush()
    assert "background commit of 1 writes failed" in caplog.text
    assert committed(behind.directory) == [] and behind.pending == 1
    folder.unlink()
    behind.flush()
    assert committed(behind.directory) == [rid]
    assert behind.verify()["missing"] == []


def test_a_writer_error_surfaces_on_the_next_put_which_is_not_taken(tmp_path):
    recorder = AuditRecorder(
        tmp_path / "audit", write_behind=True, max_pending=1, flush_interval=NEVER, max_delay=None
    )
    first = answer("first")
    folder = obstruct_blob_folder(recorder, first.payload)
    kept = recorder.record(first)  # a full queue: the writer tries it at once, and fails
    with pytest.raises(AuditWriteError, match="kept and retried"):
        recorder.record(answer("second"))
    folder.unlink()
    recorder.close()
    assert committed(recorder.directory) == [kept]


def test_bad_settings_are_refused():
    with pytest.raises(ConfigurationError, match="max_pending=0"):
        AuditRecorder("unused", write_behind=True, max_pending=0)
    with pytest.raises(
        ConfigurationError, match=r"flush_interval <= max_delay / 4 .* flush_interval=0.3, max_delay=0.5"
    ):
        AuditRecorder("unused", write_behind=True, flush_interval=0.3)


def _record_in_child(recorder: AuditRecorder, count: int) -> None:
    for n in range(count):
        recorder.record(answer(f"child/{n}"))
    # No flush and no close: the child's own writer commits at its (multiprocessing) exit.


def test_a_forked_child_starts_its_own_writer_and_leaves_the_parents_queue_to_the_parent(behind):
    parent_id = behind.record(answer("parent"))  # queued in the parent at the time of the fork
    child = multiprocessing.get_context("fork").Process(target=_record_in_child, args=(behind, 5))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    child_ids = [request_id({"url": f"mem://child/{n}"}) for n in range(5)]
    assert committed(behind.directory) == child_ids
    behind.flush()
    assert committed(behind.directory) == [*child_ids, parent_id]
    pids = {session["pid"] for session in behind.sessions()}
    assert pids == {os.getpid(), child.pid}


# A child process recording through a pipeline in write-behind mode; it prints how many
# records it made and, every `every` of them, "flushed <n>" once they are committed.
# argv: directory, worker name, count (0 = forever), every (0 = never flush).
CHILD = textwrap.dedent(
    """
    import sys
    from datapipelines import DataPipeline
    from datapipelines.remote import RawResponse, RemoteSource, response_for
    from datapipelines.sinks.audit import AuditRecorder

    class Adapter:
        def fetch(self, request):
            payload = (request.target * 50).encode()
            return response_for(request, payload=payload, status_code=200, content_type="text/plain")

    directory, worker, count, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    recorder = AuditRecorder(directory, write_behind=True)
    pipeline = DataPipeline([recorder, RemoteSource(Adapter())])
    n = 0
    while count == 0 or n < count:
        pipeline.get(RawResponse, {"url": f"mem://{worker}/{n}"}, refresh=True)
        n += 1
        if every and n % every == 0:
            recorder.flush()
            print("flushed", n, flush=True)
    print("made", n, flush=True)
    # Neither flush nor close: the exit hook commits what is still queued.
    """
)


def child(directory, worker: str, count: int, every: int = 0) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), worker, str(count), str(every)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_four_write_behind_processes_lose_no_row(tmp_path):
    directory = tmp_path / "audit"
    AuditRecorder(directory).close()
    per_worker = 80
    workers = [child(directory, f"w{i}", per_worker) for i in range(4)]
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0 and out.split()[-2:] == ["made", str(per_worker)]
    with sqlite3.connect(directory / "audit.sqlite") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM responses").fetchone() == (
            4 * per_worker,
            4 * per_worker,
        )
        targets = {row[0] for row in db.execute("SELECT target FROM requests")}
        sessions = db.execute("SELECT COUNT(*) FROM sessions WHERE implicit = 1").fetchone()
    assert targets == {f"mem://w{i}/{n}" for i in range(4) for n in range(per_worker)}
    assert sessions == (4,)
    with AuditRecorder(directory) as recorder:
        report = recorder.verify()
    assert (len(report["ok"]), report["missing"], report["damaged"]) == (4 * per_worker, [], [])


def test_a_killed_write_behind_process_leaves_every_committed_record_readable(tmp_path):
    directory = tmp_path / "audit"
    worker = child(directory, "doomed", 0, every=10)
    assert worker.stdout is not None
    flushed = 0
    while flushed < 30:
        line = worker.stdout.readline().split()
        flushed = int(line[1]) if line[0] == "flushed" else flushed
    recorded = kill_and_check(worker, directory, flushed)
    with AuditRecorder(directory) as recorder:
        (session,) = recorder.sessions()
        assert session["ended_at"] is None and session["responses"] == recorded
        assert recorder.replayed(request_id({"url": "mem://doomed/0"})).payload == b"mem://doomed/0" * 50
        recorder.gc(min_age=0)
        assert len(recorder.verify()["ok"]) == recorded
