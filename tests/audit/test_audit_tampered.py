"""A tampered audit directory never makes the tools open anything outside ``blobs/``.

Each case plants something in the database or in ``blobs/`` (a path where a sha256
belongs, a FIFO, /dev/zero, symlinks pointing out) and runs verify, show --payload,
export and replay in a child process with a timeout and a memory limit: opening a
FIFO would block, reading /dev/zero would eat the memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from datapipelines import DataPipeline
from datapipelines.remote import RawResponse, RemoteSource, request_id
from datapipelines.sinks.audit import AuditRecorder, DamagedBlobError
from tests.support.remote import EchoAdapter

QUERY = {"url": "mem://a"}
PAYLOAD = b"payload of mem://a"
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()
MEMORY_LIMIT = 1 << 30  # bytes of address space for a child: /dev/zero read whole would exceed it

# argv: directory. Replays QUERY and prints what happened as one JSON line.
REPLAY = textwrap.dedent(
    """
    import json, sys
    from datapipelines.errors import NotFoundError
    from datapipelines.remote import RawResponse
    from datapipelines.sinks.audit import AuditRecorder, DamagedBlobError

    recorder = AuditRecorder(sys.argv[1])
    try:
        recorder.get(RawResponse, {"url": "mem://a"})
        outcome = "served"
    except DamagedBlobError:
        outcome = "damaged"
    except NotFoundError:
        outcome = "not found"
    print(json.dumps(outcome))
    """
)


@pytest.fixture
def directory(tmp_path):
    path = tmp_path / "audit"
    with AuditRecorder(path) as recorder:
        pipeline = DataPipeline([recorder, RemoteSource(EchoAdapter())])
        with pipeline.session("nightly"):
            pipeline.get(RawResponse, QUERY)
    return path


def limited(*argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``python argv...`` with a timeout and a memory limit, so a blocked or greedy read fails."""

    def limit_memory() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, preexec_fn=limit_memory
    )


def cli(directory, *argv: str) -> subprocess.CompletedProcess[str]:
    return limited("-m", "datapipelines.cli", "audit", "--dir", str(directory), *argv)


def tamper(directory, sha256: str) -> None:
    with sqlite3.connect(directory / "audit.sqlite") as db:
        db.execute("UPDATE responses SET sha256 = ?", (sha256,))


def fifo(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return str(path)


def assert_one_error(stderr: str) -> None:
    """The refusal is one error line (after the recorder's logged warning), never a traceback."""
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("datapipelines: error: ")]
    assert len(errors) == 1 and errors[0].startswith("datapipelines: error: Recorded blob")


def check_every_tool_refuses(directory, tmp_path, name: str) -> None:
    """verify reports ``name`` as damaged; show --payload, export and replay refuse it, opening nothing."""
    verify = cli(directory, "--json", "verify")
    assert verify.returncode == 1, verify.stderr
    assert json.loads(verify.stdout) == {"ok": 0, "missing": [], "damaged": [name]}
    show = cli(directory, "show", request_id(QUERY), "--payload")
    assert show.returncode == 2 and show.stdout == ""
    assert_one_error(show.stderr)
    export = cli(directory, "export", "nightly", str(tmp_path / "copy"))
    assert export.returncode == 2
    assert_one_error(export.stderr)
    replay = limited("-c", REPLAY, str(directory))
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout) == "damaged"


@pytest.mark.parametrize("planted", ["fifo", "/dev/zero", "../../../../../../dev/zero"])
def test_a_path_in_the_sha256_column_is_never_opened(directory, tmp_path, planted):
    name = fifo(tmp_path) if planted == "fifo" else planted
    tamper(directory, name)
    check_every_tool_refuses(directory, tmp_path, name)


@pytest.mark.parametrize("target", ["fifo", "/dev/zero"])
def test_a_blob_that_is_a_symlink_out_of_blobs_is_never_followed(directory, tmp_path, target):
    blob = AuditRecorder(directory).blobs.path(DIGEST)
    blob.unlink()
    blob.symlink_to(fifo(tmp_path) if target == "fifo" else target)
    check_every_tool_refuses(directory, tmp_path, DIGEST)


def test_a_fifo_where_the_blob_should_be_is_not_read(directory, tmp_path):
    blob = AuditRecorder(directory).blobs.path(DIGEST)
    blob.unlink()
    os.mkfifo(blob)
    check_every_tool_refuses(directory, tmp_path, DIGEST)


def test_a_blob_folder_that_is_a_symlink_out_of_blobs_is_never_followed(directory, tmp_path):
    # The right bytes under the right name, but outside blobs/: not served, reported damaged.
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = AuditRecorder(directory).blobs.path(DIGEST).parent
    (outside / DIGEST).write_bytes(PAYLOAD)
    for entry in folder.iterdir():
        entry.unlink()
    folder.rmdir()
    folder.symlink_to(outside)
    check_every_tool_refuses(directory, tmp_path, DIGEST)
    # gc does not walk into it either, however old its files are.
    with AuditRecorder(directory) as recorder:
        recorder.gc(min_age=0)
    assert (outside / DIGEST).read_bytes() == PAYLOAD


def test_a_bad_row_is_damaged_in_process_too_and_a_live_pipeline_fetches_again(directory, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not the recorder's")
    tamper(directory, str(outside))
    with AuditRecorder(directory) as recorder:
        assert recorder.verify()["damaged"] == [str(outside)]
        with pytest.raises(DamagedBlobError, match="not a sha256"):
            recorder.replayed(request_id(QUERY))
        pipeline = DataPipeline([recorder, RemoteSource(EchoAdapter())])
        assert pipeline.get(RawResponse, QUERY).payload == PAYLOAD
        assert pipeline.get(RawResponse, QUERY).replayed  # the new recording serves now
    # Never opened, never moved aside as a damaged blob would be.
    assert outside.read_bytes() == b"not the recorder's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit", "outside.txt"]


def test_a_blob_column_of_another_type_is_reported_not_a_crash(directory):
    with sqlite3.connect(directory / "audit.sqlite") as db:
        db.execute("UPDATE responses SET sha256 = ?", (b"\x00binary",))
    with AuditRecorder(directory) as recorder:
        assert recorder.verify() == {"ok": [], "missing": [], "damaged": ["b'\\x00binary'"]}


def test_writes_never_go_through_a_symlinked_blob_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    directory = tmp_path / "audit"
    recorder = AuditRecorder(directory)
    (directory / "blobs").mkdir()
    (directory / "blobs" / DIGEST[:2]).symlink_to(outside)
    pipeline = DataPipeline([recorder, RemoteSource(EchoAdapter())], strict=True)
    with pytest.raises(Exception, match="is a symlink or not a directory"):
        pipeline.get(RawResponse, QUERY)
    assert list(outside.iterdir()) == []
