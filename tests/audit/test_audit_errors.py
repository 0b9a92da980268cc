"""A garbage or unusable audit directory: one clear error naming the path, and the file left as it was."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import pytest

from datapipelines.cli import main
from datapipelines.errors import DataPipelinesError
from datapipelines.remote import request_for, request_id, response_for
from datapipelines.sinks.audit import AuditRecorder, AuditStoreError

COMMANDS = [
    ["sessions"],
    ["--json", "sessions"],
    ["show", request_id({"url": "mem://1"})],
    ["show", request_id({"url": "mem://1"}), "--payload"],
    ["export", "anything", "COPY"],
    ["verify"],
    ["gc", "--min-age", "0"],
]


def random_bytes(directory):
    directory.mkdir()
    (directory / "audit.sqlite").write_bytes(os.urandom(64 * 1024))


def truncated(directory):
    with AuditRecorder(directory) as recorder:
        for n in range(300):
            recorder.record(
                response_for(request_for({"url": f"mem://{n}"}), payload=b"x" * 100, status_code=200)
            )
    database = directory / "audit.sqlite"
    os.truncate(database, database.stat().st_size // 2)


def a_header_only(directory):
    truncated(directory)
    os.truncate(directory / "audit.sqlite", 60)


def a_table_dropped(directory):
    # Recreating it would show every session with no responses, and change the file.
    with AuditRecorder(directory) as recorder:
        recorder.record(response_for(request_for({"url": "mem://1"}), payload=b"x", status_code=200))
    db = sqlite3.connect(directory / "audit.sqlite")
    db.execute("DROP TABLE responses")
    db.commit()
    db.close()


GARBAGE = [random_bytes, truncated, a_header_only, a_table_dropped]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("make", GARBAGE)
@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_audit_command_on_a_garbage_database_is_one_line_and_leaves_it_untouched(
    tmp_path, capsys, make, command
):
    directory = tmp_path / "audit\x1b[2J"  # the name is quoted from the path: escaped too
    make(directory)
    database = directory / "audit.sqlite"
    before = digest(database)
    argv = [str(tmp_path / "copy") if arg == "COPY" else arg for arg in command]
    assert main(["audit", "--dir", str(directory), *argv]) == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert out == "" and line.startswith("datapipelines: error: Audit database ") and line.isprintable()
    assert str(directory).replace("\x1b", "\\x1b") + "/audit.sqlite" in line
    assert digest(database) == before


@pytest.mark.parametrize("make", GARBAGE)
def test_the_library_names_the_garbage_file_and_keeps_the_cause(tmp_path, make):
    directory = tmp_path / "audit"
    make(directory)
    before = digest(directory / "audit.sqlite")
    with pytest.raises(AuditStoreError, match=f"^Audit database {directory}/audit.sqlite: ") as caught:
        AuditRecorder(directory)
    assert isinstance(caught.value.__cause__, sqlite3.DatabaseError)
    assert isinstance(caught.value, DataPipelinesError)
    assert digest(directory / "audit.sqlite") == before


def test_a_directory_that_is_a_file_is_named(tmp_path):
    (tmp_path / "plain").write_text("not a directory")
    with pytest.raises(
        AuditStoreError, match=f"Cannot create the audit directory {tmp_path}/plain/audit"
    ) as caught:
        AuditRecorder(tmp_path / "plain" / "audit")
    assert isinstance(caught.value.__cause__, OSError)


def test_a_directory_nobody_can_write_is_named():
    # /proc refuses new files even to root, so this holds however the tests run.
    with pytest.raises(AuditStoreError, match="^Audit database /proc/self/audit.sqlite: ") as caught:
        AuditRecorder("/proc/self")
    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)


def test_a_database_that_is_a_directory_is_named(tmp_path):
    (tmp_path / "audit" / "audit.sqlite").mkdir(parents=True)
    with pytest.raises(AuditStoreError, match=f"Audit database {tmp_path}/audit/audit.sqlite: "):
        AuditRecorder(tmp_path / "audit")


def test_a_row_that_is_not_json_is_named(tmp_path, capsys):
    directory = tmp_path / "audit"
    with AuditRecorder(directory) as recorder:
        recorder.record(response_for(request_for({"url": "mem://1"}), payload=b"1", status_code=200))
    with sqlite3.connect(directory / "audit.sqlite") as db:
        db.execute("UPDATE sessions SET meta = '{not json'")
    assert main(["audit", "--dir", str(directory), "sessions"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(
        f"datapipelines: error: Audit database {directory}/audit.sqlite: the meta of session"
    )


@pytest.mark.parametrize(
    ("column", "value"), [("fetched_at", "yesterday"), ("elapsed", "slow"), ("fetched_at", 1e300)]
)
def test_a_row_of_the_wrong_shape_is_one_error_naming_the_file(tmp_path, capsys, column, value):
    directory = tmp_path / "audit"
    with AuditRecorder(directory) as recorder:
        recorder.record(response_for(request_for({"url": "mem://1"}), payload=b"1", status_code=200))
    with sqlite3.connect(directory / "audit.sqlite") as db:
        db.execute(f"UPDATE responses SET {column} = ?", (value,))
    assert main(["audit", "--dir", str(directory), "show", request_id({"url": "mem://1"})]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"datapipelines: error: Audit database {directory}/audit.sqlite: a row is not")


def test_a_warning_the_library_logs_is_one_escaped_line_too(tmp_path, capsys):
    directory = tmp_path / "audit\x1b[2J"  # the warning quotes the blob's path
    with AuditRecorder(directory) as recorder:
        recorder.record(response_for(request_for({"url": "mem://1"}), payload=b"1", status_code=200))
    (blob,) = (path for path in (directory / "blobs").rglob("*") if path.is_file())
    blob.write_bytes(b"changed")
    assert main(["audit", "--dir", str(directory), "show", request_id({"url": "mem://1"}), "--payload"]) == 2
    warning, error = capsys.readouterr().err.splitlines()
    assert warning.startswith("datapipelines: warning: Blob ") and "audit\\x1b[2J" in warning
    assert warning.isprintable() and error.startswith("datapipelines: error: Recorded blob")
