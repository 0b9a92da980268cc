"""Write-behind durability under a caller that records as fast as it can, then is SIGKILLed.

docs/audit.md promises that a record is committed at most ``max_delay`` seconds after
``put`` returned (back-pressure keeps the queue that young): a SIGKILL loses only the
records of the last ``max_delay`` seconds.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

from datapipelines.sinks.audit import AuditRecorder

MAX_DELAY = 0.5  # AuditRecorder's default max_delay, as docs/audit.md states it
RUN_SECONDS = 3.0  # long enough for a writer that cannot keep up to fall far behind

# argv: directory. Records flat out; after each record, "n monotonic-time" (the clock is system-wide).
CHILD = textwrap.dedent(
    """
    import sys, time
    from datapipelines import DataPipeline
    from datapipelines.remote import RawResponse, RemoteSource, response_for
    from datapipelines.sinks.audit import AuditRecorder

    class Adapter:
        def fetch(self, request):
            return response_for(request, payload=request.target.encode() * 20, status_code=200)

    pipeline = DataPipeline([AuditRecorder(sys.argv[1], write_behind=True), RemoteSource(Adapter())])
    out, clock, n = sys.stdout, time.monotonic, 0
    while True:
        pipeline.get(RawResponse, {"url": f"mem://fast/{n}"}, refresh=True)
        out.write(f"{n} {clock()}\\n")
        n += 1
        if n % 50 == 0:
            out.flush()
    """
)


def test_records_returned_more_than_max_delay_before_a_sigkill_are_committed(tmp_path):
    directory = tmp_path / "audit"
    worker = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory)], stdout=subprocess.PIPE, text=True
    )
    returned: list[tuple[int, float]] = []

    def read() -> None:
        assert worker.stdout is not None
        for line in worker.stdout:
            n, at = line.split()
            returned.append((int(n), float(at)))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while (not returned or time.monotonic() - returned[0][1] < RUN_SECONDS) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed_at = time.monotonic()
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=30)
    reader.join(timeout=30)
    assert len(returned) > 200, "the child should have recorded flat out"
    with sqlite3.connect(directory / "audit.sqlite") as db:
        committed = {row[0] for row in db.execute("SELECT target FROM requests")}

    def lost_before(moment: float) -> list[float]:
        """When each record returned before ``moment`` and missing from the database returned."""
        return [at for n, at in returned if at < moment and f"mem://fast/{n}" not in committed]

    # The exact form: the last put seen began after the line before it was written, and its
    # return promised that every record returned over max_delay / 4 before that was committed.
    assert lost_before(returned[-2][1] - MAX_DELAY / 4) == []
    # As the issue measures it: against the moment of the kill.
    lost = lost_before(killed_at - MAX_DELAY)
    assert lost == [], (
        f"{len(lost)} records returned over {MAX_DELAY}s before the kill were lost, "
        f"the oldest {killed_at - min(lost):.2f}s before it ({len(returned)} returned)"
    )
    with AuditRecorder(directory) as recorder:
        report = recorder.verify()
    assert report["missing"] == [] and report["damaged"] == []
