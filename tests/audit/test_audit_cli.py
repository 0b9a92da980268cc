"""`datapipelines audit`: sessions, show, export, verify, gc; tables by default, --json for scripts."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest

from datapipelines import DataPipeline
from datapipelines.cli import main
from datapipelines.cli.audit import summary_text
from datapipelines.remote import RawResponse, RemoteSource, request_id
from datapipelines.sinks.audit import AuditRecorder
from tests.support.remote import EchoAdapter


@pytest.fixture
def directory(tmp_path):
    path = tmp_path / "audit"
    with AuditRecorder(path) as recorder:
        pipeline = DataPipeline([recorder, RemoteSource(EchoAdapter())])
        with pipeline.session("nightly", meta={"job": "weather"}):
            for url in ("mem://a", "mem://b", "mem://broken"):
                try:
                    pipeline.get(RawResponse, {"url": url})
                except Exception:
                    pass
        with pipeline.session("morning"):
            pipeline.get(RawResponse, {"url": "mem://c"})
    return path


def run(capsys, *argv):
    code = main(["audit", *argv])
    return code, capsys.readouterr().out


def test_sessions_table_and_json(directory, capsys):
    code, out = run(capsys, "--dir", str(directory), "sessions")
    header, rule, nightly, morning = out.splitlines()
    assert code == 0 and header.split() == [
        "session",
        "name",
        "started",
        "ended",
        "responses",
        "errors",
        "damaged",
        "bytes",
    ]
    assert (
        set(rule) == {"-", " "} and "nightly" in nightly and nightly.split()[-4:] == ["3", "1", "0", "59"]
    )  # 18 + 18 + 23 payload bytes
    code, out = run(capsys, "--dir", str(directory), "--json", "sessions")
    sessions = json.loads(out)
    assert [(s["name"], s["responses"], s["errors"]) for s in sessions] == [
        ("nightly", 3, 1),
        ("morning", 1, 0),
    ]
    assert sessions[0]["meta"] == {"job": "weather"}


def test_show_a_request_by_prefix(directory, capsys):
    rid = request_id({"url": "mem://broken"})
    code, out = run(capsys, "--dir", str(directory), "show", rid[:10])
    assert code == 0 and f"request  {rid}" in out and "GET mem://broken" in out and " 500 " in out
    code, out = run(capsys, "--dir", str(directory), "--json", "show", rid)
    shown = json.loads(out)
    assert shown["target"] == "mem://broken" and [r["status"] for r in shown["responses"]] == [500]
    assert main(["audit", "--dir", str(directory), "show", "abc"]) == 2
    assert "at least 6 characters" in capsys.readouterr().err


def test_show_payload_writes_the_exact_bytes(directory, capfdbinary):
    assert main(["audit", "--dir", str(directory), "show", request_id({"url": "mem://a"}), "--payload"]) == 0
    assert capfdbinary.readouterr().out == b"payload of mem://a"


def test_export_then_replay_the_copy(directory, tmp_path, capsys):
    code, out = run(capsys, "--dir", str(directory), "export", "morning", str(tmp_path / "copy"))
    assert code == 0 and "1 requests, 1 responses" in out
    with AuditRecorder(tmp_path / "copy") as copy:
        assert copy.get(RawResponse, {"url": "mem://c"}).payload == b"payload of mem://c"
        assert [s["name"] for s in copy.sessions()] == ["morning"]


def test_verify_reports_missing_and_damaged_blobs(directory, capsys):
    assert run(capsys, "--dir", str(directory), "verify") == (0, "4 blobs ok, 0 missing, 0 damaged\n")
    blobs = AuditRecorder(directory).blobs
    missing, damaged = (hashlib.sha256(f"payload of mem://{x}".encode()).hexdigest() for x in "ab")
    blobs.path(missing).unlink()
    blobs.path(damaged).write_bytes(b"payload of mem://B")
    code, out = run(capsys, "--dir", str(directory), "--json", "verify")
    assert code == 1 and json.loads(out) == {"ok": 2, "missing": [missing], "damaged": [damaged]}
    code, out = run(capsys, "--dir", str(directory), "verify")
    assert code == 1 and out.splitlines()[0] == "2 blobs ok, 1 missing, 1 damaged"
    assert f"{missing}  missing" in out and f"{damaged}  damaged" in out


def test_gc_removes_orphans(directory, capsys):
    AuditRecorder(directory).blobs.write(b"orphan")
    assert run(capsys, "--dir", str(directory), "gc") == (0, "removed 0 unreferenced blob file(s)\n")
    code, out = run(capsys, "--dir", str(directory), "--json", "gc", "--min-age", "0")
    assert code == 0 and len(json.loads(out)["removed"]) == 1


def test_a_directory_without_a_recorder_is_a_clear_error(tmp_path, capsys):
    assert main(["audit", "--dir", str(tmp_path), "sessions"]) == 2
    assert "not an audit recorder directory" in capsys.readouterr().err


def test_the_installed_command_runs(directory):
    result = subprocess.run(
        [sys.executable, "-m", "datapipelines.cli", "audit", "--dir", str(directory), "--json", "sessions"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and len(json.loads(result.stdout)) == 2


def test_summary_text_names_the_session_and_its_statuses(directory):
    with AuditRecorder(directory) as recorder:
        text = summary_text(recorder, "nightly")
    assert "'nightly'" in text and "3 responses, 1 errors" in text
    lines = text.splitlines()
    assert lines[1].split() == ["source", "status", "requests", "responses", "bytes", "ms", "blobs"]
    assert [line.split()[:3] for line in lines[3:]] == [["http", "200", "2"], ["http", "500", "1"]]


HOSTILE = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil\r\nname\x08"


def test_control_characters_in_stored_text_are_escaped_in_tables_and_exact_in_json(tmp_path, capsys):
    directory = tmp_path / "audit"
    with AuditRecorder(directory) as recorder:
        pipeline = DataPipeline([recorder, RemoteSource(EchoAdapter())])
        with pipeline.session(HOSTILE, meta={"note": HOSTILE}):
            pipeline.get(RawResponse, {"url": "mem://host/" + HOSTILE})
    code, out = run(capsys, "--dir", str(directory), "sessions")
    assert code == 0 and "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eevil\\x0d\\x0aname\\x08" in out
    code, out = run(capsys, "--dir", str(directory), "show", request_id({"url": "mem://host/" + HOSTILE}))
    assert code == 0 and "GET mem://host/\\x1b]0;owned" in out
    for command in ("sessions", "show"):
        argv = [command] + ([request_id({"url": "mem://host/" + HOSTILE})] if command == "show" else [])
        for json_flag in ([], ["--json"]):
            code, out = run(capsys, "--dir", str(directory), *json_flag, *argv)
            assert code == 0 and all(c == "\n" or c.isprintable() for c in out), (command, json_flag)
    code, out = run(capsys, "--dir", str(directory), "--json", "sessions")
    (session,) = json.loads(out)
    assert session["name"] == HOSTILE and session["meta"] == {"note": HOSTILE}
    assert main(["audit", "--dir", str(directory), "export", "x" + HOSTILE, str(tmp_path / "copy")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.isprintable() and "No session" in line
