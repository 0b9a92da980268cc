"""Nothing lost: concurrent recording processes, and a process killed with SIGKILL mid-run."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

from datapipelines.remote import request_id
from datapipelines.sinks.audit import AuditRecorder

# A child process: a pipeline recorder -> RemoteSource with an in-process adapter, so every
# pipeline.get is one real recorded response. argv: directory, worker name, count (0 = forever).
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

    directory, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pipeline = DataPipeline([AuditRecorder(directory), RemoteSource(Adapter())])
    with pipeline.session(worker):
        n = 0
        while count == 0 or n < count:
            pipeline.get(RawResponse, {"url": f"mem://{worker}/{n}"}, refresh=True)
            n += 1
            print(n, flush=True)
    """
)


def child(directory, worker, count):
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), worker, str(count)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_four_processes_recording_at_once_lose_no_row(tmp_path):
    directory = tmp_path / "audit"
    AuditRecorder(directory).close()
    per_worker = 60
    workers = [child(directory, f"w{i}", per_worker) for i in range(4)]
    for worker in workers:
        out, _ = worker.communicate(timeout=120)
        assert worker.returncode == 0 and out.split()[-1] == str(per_worker)
    with sqlite3.connect(directory / "audit.sqlite") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM responses").fetchone() == (
            240,
            240,
        )
        assert db.execute("SELECT COUNT(*) FROM requests").fetchone() == (240,)
        per_session = db.execute(
            "SELECT s.name, COUNT(*) FROM responses r JOIN sessions s ON s.id = r.session_id GROUP BY s.name"
        ).fetchall()
    assert sorted(per_session) == [(f"w{i}", per_worker) for i in range(4)]
    with AuditRecorder(directory) as recorder:
        report = recorder.verify()
    assert (len(report["ok"]), report["missing"], report["damaged"]) == (240, [], [])


def test_a_killed_process_leaves_every_committed_record_readable(tmp_path):
    directory = tmp_path / "audit"
    worker = child(directory, "doomed", 0)
    assert worker.stdout is not None
    committed = 0
    while committed < 40:
        committed = int(worker.stdout.readline())
    recorded = kill_and_check(worker, directory, committed)
    with AuditRecorder(directory) as recorder:
        (session,) = recorder.sessions()
        assert (
            session["name"] == "doomed" and session["ended_at"] is None and session["responses"] == recorded
        )
        replayed = recorder.replayed(request_id({"url": "mem://doomed/0"}))
        assert replayed.payload == b"mem://doomed/0" * 50
        # Orphan blobs from the interrupted write are collectable; committed ones stay.
        recorder.gc(min_age=0)
        assert len(recorder.verify()["ok"]) == recorded


def kill_and_check(worker: subprocess.Popen, directory: Path, committed: int) -> int:
    """SIGKILL ``worker``; the database must be intact and hold the first ``committed`` records
    (and any blob it names). Returns how many responses it holds."""
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    assert worker.returncode == -signal.SIGKILL
    with sqlite3.connect(directory / "audit.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        (recorded,) = db.execute("SELECT COUNT(*) FROM responses").fetchone()
        targets = {row[0] for row in db.execute("SELECT target FROM requests")}
    assert recorded >= committed
    assert {f"mem://doomed/{n}" for n in range(committed)} <= targets
    with AuditRecorder(directory) as recorder:
        report = recorder.verify()
        assert report["missing"] == [] and report["damaged"] == [] and len(report["ok"]) == recorded
    return int(recorded)
