"""AuditRecorder in a pipeline: recording, sessions, replay, refresh/only_cached, errors, integrity."""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
from dataclasses import dataclass

import pytest

from datapipelines import DataPipeline, NotFoundError
from datapipelines.errors import ConfigurationError
from datapipelines.http import HttpSource
from datapipelines.remote import RawResponse, RemoteError, request_for, request_id, response_for
from datapipelines.sinks.audit import AuditRecorder, DamagedBlobError
from datapipelines.sinks.memory import MemoryStore
from datapipelines.testing import LocalServer, Reply
from datapipelines.transformers import JSON, DataclassTransformer, RawTransformer

OSLO = {"path": "/weather", "params": {"city": "Oslo"}}
ROME = {"path": "/weather", "params": {"city": "Rome"}}


@dataclass
class Weather:
    city: str
    temp: float
    reading: int


@pytest.fixture
def server():
    readings = itertools.count(1)
    route = {"/weather": lambda hit: {"city": hit.params["city"], "temp": 20.5, "reading": next(readings)}}
    with LocalServer(route) as running:
        yield running


@pytest.fixture
def recorder(tmp_path):
    with AuditRecorder(tmp_path / "audit") as opened:
        yield opened


def transformers():
    return [RawTransformer(), DataclassTransformer(Weather)]


def live(recorder, server, memory=None):
    http = HttpSource(server.url, max_attempts=1)
    return DataPipeline([MemoryStore() if memory is None else memory, recorder, http], transformers())


def rows(recorder, sql, *args):
    with sqlite3.connect(recorder.path) as db:
        return db.execute(sql, args).fetchall()


def test_the_recorder_keeps_the_exact_bytes_and_the_cache_the_object(recorder, server):
    memory = MemoryStore()
    pipeline = live(recorder, server, memory)
    assert pipeline.get(Weather, OSLO) == Weather("Oslo", 20.5, 1)
    assert pipeline.get(Weather, OSLO) == Weather("Oslo", 20.5, 1)
    assert len(server.hits) == 1 and len(memory) == 1
    ((sha256, size, status, rid),) = rows(recorder, "SELECT sha256, size, status, request_id FROM responses")
    payload = b'{"city": "Oslo", "temp": 20.5, "reading": 1}'
    assert recorder.blobs.path(sha256).read_bytes() == payload and size == len(payload) and status == 200
    assert rid == request_id(OSLO)
    ((source, method, target, params),) = rows(
        recorder, "SELECT source, method, target, params FROM requests"
    )
    assert (source, method, target, json.loads(params)) == ("http", "GET", "/weather", [["city", "Oslo"]])
    assert rows(recorder, "PRAGMA journal_mode") == [("wal",)]


def test_a_session_groups_the_run_and_calls_outside_go_to_the_process_session(recorder, server):
    pipeline = live(recorder, server)
    with pipeline.session("nightly", meta={"run": 7}) as session_id:
        pipeline.get(Weather, OSLO)
        pipeline.get(Weather, ROME)
    pipeline.get(Weather, {"path": "/weather", "params": {"city": "Lima"}})
    nightly, process = recorder.sessions()
    assert (nightly["id"], nightly["name"], nightly["meta"], nightly["responses"]) == (
        session_id,
        "nightly",
        {"run": 7},
        2,
    )
    assert nightly["started_at"] <= nightly["ended_at"] and not nightly["implicit"]
    assert process["implicit"] and process["name"].startswith(f"process {os.getpid()}@")
    assert process["responses"] == 1 and process["ended_at"] is None
    recorder.close()
    assert AuditRecorder(recorder.directory).sessions()[1]["ended_at"] is not None


def test_replay_offline_gives_the_same_objects(tmp_path, server):
    with AuditRecorder(tmp_path / "audit") as recorder:
        pipeline = live(recorder, server)
        originals = [pipeline.get(Weather, OSLO), pipeline.get(JSON, ROME)]
    hits = len(server.hits)
    with AuditRecorder(tmp_path / "audit") as reopened:
        offline = DataPipeline([MemoryStore(), reopened], transformers())
        assert [offline.get(Weather, OSLO), offline.get(JSON, ROME)] == originals
        replayed = reopened.get(RawResponse, OSLO)
        assert replayed.replayed and replayed.request_id == request_id(OSLO) and replayed.status_code == 200
        with pytest.raises(NotFoundError):
            offline.get(Weather, {"path": "/weather", "params": {"city": "Never"}})
        with pytest.raises(NotFoundError, match="never recorded"):
            reopened.get(RawResponse, {"path": "/weather", "params": {"city": "Never"}})
    assert len(server.hits) == hits


def test_replay_serves_the_newest_response_of_a_request(recorder):
    request = request_for(OSLO)
    for reading in (1, 2, 3):
        payload = json.dumps({"city": "Oslo", "temp": 1.0, "reading": reading}).encode()
        recorder.record(
            response_for(request, payload=payload, status_code=200, content_type="application/json")
        )
    recorder.record(response_for(request, payload=b"oops", status_code=503))
    offline = DataPipeline([recorder], transformers())
    assert offline.get(Weather, OSLO).reading == 3


def test_refresh_skips_every_cache_tier_and_still_writes_back_and_records(recorder, server):
    memory = MemoryStore()
    pipeline = live(recorder, server, memory)
    assert pipeline.get(Weather, OSLO).reading == 1
    assert pipeline.get(Weather, OSLO, refresh=True).reading == 2
    assert pipeline.get(Weather, OSLO).reading == 2
    assert len(server.hits) == 2
    assert rows(recorder, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM responses") == [(2, 1)]
    assert recorder.get(RawResponse, OSLO).payload.endswith(b'"reading": 2}')


def test_only_cached_never_calls_the_remote_source(recorder, server):
    memory = MemoryStore()
    pipeline = live(recorder, server, memory)
    with pytest.raises(NotFoundError):
        pipeline.get(Weather, OSLO, only_cached=True)
    assert server.hits == []
    pipeline.get(Weather, OSLO)
    memory.clear()
    # The recorder is a cache tier: only_cached may replay from it, never fetch.
    assert pipeline.get(Weather, OSLO, only_cached=True).reading == 1
    assert len(server.hits) == 1 and len(memory) == 1


def test_error_answers_are_recorded_but_never_cached_or_replayed(recorder, server):
    memory = MemoryStore()
    pipeline = live(recorder, server, memory)
    server.script("/weather", Reply(500, {"error": "down"}))
    with pytest.raises(RemoteError) as raised:
        pipeline.get(Weather, OSLO)
    assert raised.value.status == 500
    with pytest.raises(NotFoundError):
        pipeline.get(Weather, {"path": "/gone"})
    assert len(memory) == 0
    recorded = rows(
        recorder, "SELECT q.target, r.status FROM responses r JOIN requests q ON q.id = r.request_id"
    )
    assert sorted(recorded) == [("/gone", 404), ("/weather", 500)]
    offline = DataPipeline([MemoryStore(), recorder], transformers())
    with pytest.raises(NotFoundError):
        offline.get(Weather, OSLO)
    with pytest.raises(NotFoundError, match=r"only error answers \(last: 500\)"):
        recorder.get(RawResponse, OSLO)
    assert pipeline.get(Weather, OSLO).reading == 1


def test_identical_payloads_are_stored_once(recorder):
    for city in ("Oslo", "Rome", "Lima"):
        request = request_for({"path": "/w", "params": {"city": city}})
        recorder.record(response_for(request, payload=b"same bytes", status_code=200))
    assert len(list(recorder.blobs.files())) == 1
    assert rows(recorder, "SELECT COUNT(*) FROM responses") == [(3,)]


def test_secrets_count_in_the_id_but_are_never_written(recorder):
    query = {"path": "/me", "headers": {"Authorization": "Bearer s3cret"}}
    recorder.record(
        response_for(
            request_for(query), payload=b"{}", status_code=200, headers={"set-cookie": "session=abc"}
        )
    )
    assert request_id(query) != request_id({**query, "headers": {"Authorization": "Bearer other"}})
    with open(recorder.path, "rb") as database:
        assert b"s3cret" not in database.read()
    assert recorder.request_history(request_id(query))["headers"] == {"authorization": "<redacted>"}


def test_send_is_recorded_with_its_body_in_the_session(recorder, server):
    server.routes["/upload"] = lambda hit: {"stored": len(hit.body)}
    http = HttpSource(server.url)
    pipeline = DataPipeline([MemoryStore(), recorder, http], transformers())
    with pipeline.session("upload"):
        http.send({"path": "/upload", "body": b"\x00exact bytes"}, pipeline=pipeline)
    history = recorder.request_history(
        request_id({"path": "/upload", "method": "POST", "body": b"\x00exact bytes"})
    )
    assert history["method"] == "POST" and recorder.blobs.read(history["body_sha256"]) == b"\x00exact bytes"
    assert recorder.sessions()[0]["name"] == "upload" and recorder.sessions()[0]["responses"] == 1


def test_a_damaged_blob_is_never_served_and_a_live_fetch_repairs_it(recorder, server):
    pipeline = live(recorder, server)
    pipeline.get(Weather, OSLO)
    ((sha256,),) = rows(recorder, "SELECT sha256 FROM responses")
    path = recorder.blobs.path(sha256)
    damaged = path.read_bytes().replace(b"Oslo", b"Olso")
    path.write_bytes(damaged)
    assert recorder.verify()["damaged"] == [sha256]
    with pytest.raises(DamagedBlobError, match="damaged"):
        recorder.get(RawResponse, OSLO)
    assert path.with_name(sha256 + ".damaged").read_bytes() == damaged
    assert recorder.verify()["missing"] == [sha256]
    offline = DataPipeline([MemoryStore(), recorder], transformers())
    with pytest.raises(NotFoundError):
        offline.get(Weather, OSLO)
    server.routes["/weather"] = {"city": "Oslo", "temp": 20.5, "reading": 1}  # the same bytes again
    fresh = DataPipeline([MemoryStore(), recorder, HttpSource(server.url)], transformers())
    assert fresh.get(Weather, OSLO) == Weather("Oslo", 20.5, 1)
    assert recorder.verify() == {"ok": [sha256], "missing": [], "damaged": []}
    assert offline.get(Weather, OSLO) == Weather("Oslo", 20.5, 1)


def test_gc_removes_only_unreferenced_blobs_old_enough(recorder, server):
    live(recorder, server).get(Weather, OSLO)
    orphan = recorder.blobs.write(b"written by a process killed before its row committed")
    assert recorder.gc(min_age=60) == []
    assert recorder.gc(min_age=0) == [orphan]
    assert len(recorder.verify()["ok"]) == 1 and not recorder.blobs.path(orphan).exists()


def test_export_makes_a_replayable_recorder_of_one_session(recorder, server, tmp_path):
    pipeline = live(recorder, server)
    with pipeline.session("keep"):
        kept = pipeline.get(Weather, OSLO)
    with pipeline.session("other"):
        pipeline.get(Weather, ROME)
    result = recorder.export("keep", tmp_path / "export")
    assert (result["name"], result["requests"], result["responses"]) == ("keep", 1, 1)
    with AuditRecorder(tmp_path / "export") as exported:
        assert [s["name"] for s in exported.sessions()] == ["keep"]
        offline = DataPipeline([exported], transformers())
        assert offline.get(Weather, OSLO) == kept
        with pytest.raises(NotFoundError):
            offline.get(Weather, ROME)
    with pytest.raises(ConfigurationError, match="its own"):
        recorder.export("keep", recorder.directory)
    with pytest.raises(NotFoundError, match="No session 'nope'"):
        recorder.export("nope", tmp_path / "x")


def test_record_only_mode_never_answers(tmp_path, server):
    recorder = AuditRecorder(tmp_path / "audit", replay=False)
    pipeline = live(recorder, server)
    pipeline.get(Weather, OSLO, refresh=True)
    assert [route.source for route in pipeline.routes(Weather)][1:] == pipeline.elements[2:]
    assert rows(recorder, "SELECT COUNT(*) FROM responses") == [(1,)]


def test_a_hand_built_response_is_keyed_by_the_query_it_answered(recorder):
    pipeline = DataPipeline([recorder])
    pipeline.put(RawResponse, RawResponse(payload=b"{}", status_code=200), query=ROME)
    assert recorder.get(RawResponse, ROME).payload == b"{}"
    with pytest.raises(ConfigurationError, match="without a request_id or a query"):
        recorder.record(RawResponse(payload=b"{}", status_code=200))
    with pytest.raises(NotFoundError, match="not a remote query"):
        recorder.get(RawResponse, {"city": "Oslo"})
