"""What mxm-dataio users rely on: partitions, replay expiry, cache modes, pinned replay, headers."""

from __future__ import annotations

import datetime
import gzip
import json
import sqlite3
import time

import httpx
import pytest

from datapipelines import CacheMode, DataPipeline, NotFoundError, Policy
from datapipelines.cli import main
from datapipelines.errors import ConfigurationError
from datapipelines.http import HttpSource, body_headers
from datapipelines.remote import (
    RawResponse,
    RemoteQueryError,
    canonical_url,
    partition,
    request_for,
    request_id,
    response_for,
)
from datapipelines.sinks.audit import AuditRecorder, DamagedBlobError
from datapipelines.sinks.memory import MemoryStore
from datapipelines.testing import LocalServer, Reply
from tests.audit import test_audit
from tests.audit.test_audit import OSLO, Weather, rows, transformers

# The recorder and LocalServer fixtures of the audit tests.
server, recorder = test_audit.server, test_audit.recorder


def converters():
    return transformers()


def live(recorder, server, *, memory=True, **options):
    http = HttpSource(server.url, max_attempts=1)
    elements = [MemoryStore(), recorder, http] if memory else [recorder, http]
    return DataPipeline(elements, converters(), **options)


# -- 1. partitions ---------------------------------------------------------------------


def test_partitions_separate_recordings_of_one_wire_request(recorder, server):
    pipeline = live(recorder, server, memory=False)
    monday = pipeline.get(Weather, {**OSLO, "as_of_bucket": "2026-11-30"})
    tuesday = pipeline.get(Weather, {**OSLO, "as_of_bucket": "2026-12-01"})
    german = pipeline.get(Weather, {**OSLO, "as_of_bucket": "2026-12-01", "cache_tag": "de"})
    assert (monday.reading, tuesday.reading, german.reading) == (1, 2, 3)
    # Sent alike: the same path and parameters, nothing else on the wire.
    sent = {(hit.path, tuple(hit.params.items())) for hit in server.hits}
    assert sent == {("/weather", (("city", "Oslo"),))}
    # Each partition replays its own answer.
    assert pipeline.get(Weather, {**OSLO, "as_of_bucket": "2026-11-30"}).reading == 1
    assert pipeline.get(Weather, {**OSLO, "as_of_bucket": "2026-12-01", "cache_tag": "de"}).reading == 3
    assert len(server.hits) == 3
    recorded = rows(recorder, "SELECT as_of_bucket, cache_tag FROM requests ORDER BY first_seen")
    assert recorded == [("2026-11-30", None), ("2026-12-01", None), ("2026-12-01", "de")]


def test_a_session_partitions_every_request_made_inside_it(recorder, server):
    pipeline = live(recorder, server, memory=False)
    with pipeline.session("daily", as_of_bucket=datetime.date(2026, 12, 1)) as session_id:
        assert isinstance(session_id, str)
        first = pipeline.get(Weather, OSLO)
        tagged = pipeline.get(Weather, {**OSLO, "cache_tag": "de"})
        assert request_for(OSLO).partition == (("as_of_bucket", "2026-12-01"),)
    with pipeline.session("daily", as_of_bucket="2026-12-02"):
        second = pipeline.get(Weather, OSLO)
    assert (first.reading, tagged.reading, second.reading) == (1, 2, 3)
    with pipeline.session("again", as_of_bucket="2026-12-01"):
        assert pipeline.get(Weather, OSLO).reading == 1  # replayed, not fetched
    assert request_for(OSLO).partition == ()  # outside, nothing is partitioned
    assert len(server.hits) == 3


def test_a_background_refresh_is_recorded_in_the_session_and_partition_that_asked(
    recorder, server, fake_clock
):
    memory = MemoryStore(clock=fake_clock)
    http = HttpSource(server.url, max_attempts=1)
    policy = {Weather: Policy(ttl=3600, soft_ttl=10)}
    pipeline = DataPipeline([memory, recorder, http], converters(), policies=policy, clock=fake_clock)
    with pipeline.session("daily", as_of_bucket="2026-12-01") as session_id:
        assert pipeline.get(Weather, OSLO).reading == 1
        fake_clock.advance(11)
        assert pipeline.get(Weather, OSLO).reading == 1  # served at once, refreshed behind
        deadline = time.monotonic() + 30
        while len(rows(recorder, "SELECT id FROM responses")) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    recorded = rows(
        recorder,
        "SELECT r.session_id, q.as_of_bucket FROM responses r JOIN requests q ON q.id = r.request_id",
    )
    assert recorded == [(session_id, "2026-12-01"), (session_id, "2026-12-01")]


def test_the_query_partition_wins_over_the_session_one():
    with partition(as_of_bucket="2026-12-01", cache_tag="en"):
        assert request_for({**OSLO, "cache_tag": "de"}).partition == (
            ("as_of_bucket", "2026-12-01"),
            ("cache_tag", "de"),
        )
        with partition(cache_tag="fr"):
            assert request_for(OSLO).partition == (("as_of_bucket", "2026-12-01"), ("cache_tag", "fr"))


def test_ids_without_partitions_are_unchanged_and_bad_partitions_are_named():
    assert request_id(OSLO) == "8079f6b3fb244d7cd458c438558976bc856395fef63ac1c33e16210b8171e7a3"
    assert request_id({**OSLO, "as_of_bucket": None}) == request_id(OSLO)
    assert request_id({**OSLO, "as_of_bucket": "2026-12-01"}) != request_id(OSLO)
    with pytest.raises(RemoteQueryError, match="'as_of_bucket' must be a non-empty str or a date, got 7"):
        request_for({**OSLO, "as_of_bucket": 7})
    with pytest.raises(RemoteQueryError, match="'cache_tag'"):
        with partition(cache_tag=""):
            pass


def test_a_replayed_response_carries_its_partition(recorder):
    query = {"url": "mem://x", "as_of_bucket": "2026-12-01"}
    recorder.record(response_for(request_for(query), payload=b"x", status_code=200))
    replayed = recorder.get(RawResponse, query)
    assert replayed.partition == (("as_of_bucket", "2026-12-01"),) and replayed.replayed


def test_a_directory_from_before_partitions_is_upgraded_in_place(tmp_path):
    directory = tmp_path / "old"
    directory.mkdir()
    with sqlite3.connect(directory / "audit.sqlite") as db:
        db.execute(
            "CREATE TABLE requests (id TEXT PRIMARY KEY, source TEXT NOT NULL, method TEXT NOT NULL, "
            "target TEXT NOT NULL, params TEXT NOT NULL, headers TEXT NOT NULL, body_sha256 TEXT, "
            "first_seen REAL NOT NULL)"
        )
        db.execute("INSERT INTO requests VALUES ('abc', 'http', 'GET', '/x', '[]', '{}', NULL, 1.0)")
    with AuditRecorder(directory) as upgraded:
        tagged = request_for({"url": "mem://y", "cache_tag": "de"})
        upgraded.record(response_for(tagged, payload=b"y", status_code=200))
        assert rows(upgraded, "SELECT id, cache_tag FROM requests ORDER BY first_seen") == [
            ("abc", None),
            (request_id({"url": "mem://y", "cache_tag": "de"}), "de"),
        ]


# -- 6. request ids follow the request -------------------------------------------------


def test_one_request_spelled_differently_has_one_id():
    spellings = [
        {"url": "https://example.com/x?a=1"},
        {"url": "https://example.com/x", "params": {"a": "1"}},
        {"url": "https://example.com/x?", "params": {"a": 1}},
        {"url": "HTTPS://Example.COM:443/x?a=1#top"},
    ]
    assert len({request_id(query) for query in spellings}) == 1
    sorted_query = {"url": "http://h/x?b=2&a=1&b=3"}
    assert request_for(sorted_query).params == (("a", "1"), ("b", "2"), ("b", "3"))
    assert request_id(sorted_query) == request_id({"url": "http://h/x", "params": {"b": [2, 3], "a": 1}})
    assert request_id({"path": "/x?a=1"}) == request_id({"path": "/x", "params": {"a": "1"}})


def test_what_differs_on_the_wire_keeps_its_own_id():
    assert request_id({"url": "https://example.com/X"}) != request_id({"url": "https://example.com/x"})
    assert request_id({"url": "https://example.com:8443/x"}) != request_id({"url": "https://example.com/x"})
    assert request_id({"url": "http://example.com/x"}) != request_id({"url": "https://example.com/x"})
    assert request_id({"url": "http://h/x?a=1&a=2"}) != request_id({"url": "http://h/x?a=2&a=1"})


def test_canonical_urls_keep_the_ids_they_had():
    # Ids computed before canonicalisation existed: recordings of these replay as before.
    assert request_id({"url": "https://example.com/x"}) == (
        "4fa1d800db14fdb81f8895030a6cc0fc8850e69997aec19c770b54c0c04515f8"
    )
    assert request_id({"url": "http://127.0.0.1:8080/api/v1/items"}) == (
        "fe6591c4a67134433ea7d1ed1750b2f32b82c7ab9ea493e5a693af74f18a4e72"
    )
    assert request_id({"url": "https://example.com/x", "params": {"a": "1", "b": [2, 3]}}) == (
        "926573c698e881a9c4f72b1e0c5319cfe6ca71bfcc5f9d24fa55133851108772"
    )


def test_canonical_url_keeps_userinfo_ports_and_ipv6_hosts():
    assert canonical_url("http://User:Pw@Host:81/P?q=1") == ("http://User:Pw@host:81/P", (("q", "1"),))
    assert canonical_url("http://[::1]:80/x") == ("http://[::1]/x", ())
    with pytest.raises(RemoteQueryError, match="not a valid URL"):
        canonical_url("http://host:99999/x")


def test_a_url_with_a_query_string_is_sent_and_recorded_once(recorder, server):
    pipeline = live(recorder, server, memory=False)
    first = pipeline.get(Weather, {"url": f"{server.url}/weather?city=Oslo"})
    again = pipeline.get(Weather, {"url": f"{server.url}/weather", "params": {"city": "Oslo"}})
    assert first == again and len(server.hits) == 1 and server.hits[0].params == {"city": "Oslo"}
    ((target, params),) = rows(recorder, "SELECT target, params FROM requests")
    assert (target, json.loads(params)) == (f"{server.url}/weather", [["city", "Oslo"]])


# -- 3. cache modes ----------------------------------------------------------------------


def test_never_fetches_and_writes_back_and_records_nothing(recorder, server):
    memory = MemoryStore()
    pipeline = DataPipeline([memory, recorder, HttpSource(server.url, max_attempts=1)], converters())
    assert pipeline.get(Weather, OSLO).reading == 1
    assert pipeline.get(Weather, OSLO, cache_mode=CacheMode.NEVER).reading == 2  # fetched, not cached
    assert pipeline.get(Weather, OSLO, cache_mode="never").reading == 3
    assert pipeline.get(Weather, OSLO).reading == 1  # the caches still hold the first answer
    assert len(memory) == 1 and rows(recorder, "SELECT COUNT(*) FROM responses") == [(1,)]
    assert pipeline.stats()["tiers"][repr(memory)]["puts"] == 1


def test_never_records_no_error_answer_either(recorder, server):
    pipeline = live(recorder, server)
    with pytest.raises(NotFoundError):
        pipeline.get(Weather, {"path": "/missing"}, cache_mode=CacheMode.NEVER)
    assert rows(recorder, "SELECT COUNT(*) FROM responses") == [(0,)]
    with pytest.raises(NotFoundError):
        pipeline.get(Weather, {"path": "/missing"})
    assert rows(recorder, "SELECT status FROM responses") == [(404,)]


@pytest.mark.parametrize(
    ("mode", "keyword"),
    [(CacheMode.BYPASS, {"refresh": True}), ("only-if-cached", {"only_cached": True}), ("default", {})],
)
def test_each_older_keyword_is_a_cache_mode(recorder, server, mode, keyword):
    by_mode, by_keyword = live(recorder, server), live(recorder, server)
    by_mode.get(Weather, OSLO), by_keyword.get(Weather, OSLO)  # one fetch, then replayed

    def outcome(pipeline, **call):
        before = len(server.hits)
        answered = pipeline.get_result(Weather, OSLO, **call).source
        return answered, len(server.hits) - before

    assert outcome(by_mode, cache_mode=mode) == outcome(by_keyword, **keyword)


def test_only_if_cached_never_calls_a_source(recorder, server):
    with pytest.raises(NotFoundError):
        live(recorder, server).get(Weather, OSLO, cache_mode=CacheMode.ONLY_IF_CACHED)
    assert server.hits == []


def test_unknown_or_contradicting_modes_are_named(recorder, server):
    pipeline = live(recorder, server)
    with pytest.raises(ConfigurationError, match="Unknown cache_mode 'revalidate'; known modes: 'default'"):
        pipeline.get(Weather, OSLO, cache_mode="revalidate")
    with pytest.raises(ConfigurationError, match="cache_mode='only_if_cached' contradicts refresh=True"):
        pipeline.get(Weather, OSLO, cache_mode=CacheMode.ONLY_IF_CACHED, refresh=True)
    assert server.hits == []


# -- 2. expiry of recorded data --------------------------------------------------------


def record_at(recorder, query, payload, fetched_at):
    response = response_for(request_for(query), payload=payload, status_code=200, fetched_at=fetched_at)
    recorder.record(response)


def weather_json(reading):
    return json.dumps({"city": "Oslo", "temp": 20.5, "reading": reading}).encode()


def test_a_recording_past_the_policy_ttl_is_fetched_again(recorder, server):
    record_at(recorder, OSLO, weather_json(100), time.time() - 3600)
    pipeline = live(recorder, server, policies={Weather: Policy(ttl=60)})
    result = pipeline.get_result(Weather, OSLO)
    assert (result.value.reading, result.stale, len(server.hits)) == (1, False, 1)
    # The new answer is recorded, and replayed while it is young.
    assert live(recorder, server, policies={Weather: Policy(ttl=60)}).get(Weather, OSLO).reading == 1
    assert len(server.hits) == 1


def test_without_a_policy_the_old_recording_is_still_replayed(recorder, server):
    record_at(recorder, OSLO, weather_json(100), time.time() - 3600)
    assert live(recorder, server).get(Weather, OSLO).reading == 100 and server.hits == []


def test_a_recording_within_max_stale_is_served_marked_stale_when_nothing_fresher_exists(recorder):
    record_at(recorder, OSLO, weather_json(100), time.time() - 3600)
    policy = {Weather: Policy(ttl=60, max_stale=7200)}
    offline = DataPipeline([MemoryStore(), recorder], converters(), policies=policy)
    result = offline.get_result(Weather, OSLO)
    assert (result.value.reading, result.stale, result.source) == (100, True, repr(recorder))
    too_old = DataPipeline([recorder], converters(), policies={Weather: Policy(ttl=60, max_stale=600)})
    with pytest.raises(NotFoundError):
        too_old.get(Weather, OSLO)


def test_a_stale_recording_covers_a_failing_source(recorder):
    record_at(recorder, OSLO, weather_json(100), time.time() - 3600)
    with LocalServer({"/weather": Reply(503, {"error": "down"})}) as failing:
        pipeline = live(recorder, failing, policies={Weather: Policy(ttl=60, max_stale=7200)})
        result = pipeline.get_result(Weather, OSLO)
    assert (result.value.reading, result.stale) == (100, True) and len(failing.hits) == 1


def test_the_recorder_ttl_bounds_what_it_replays(tmp_path):
    directory = tmp_path / "audit"
    with AuditRecorder(directory) as writer:
        record_at(writer, OSLO, b"old", time.time() - 3600)
        record_at(writer, {"url": "mem://young"}, b"young", time.time() - 5)
    with AuditRecorder(directory, ttl=datetime.timedelta(minutes=1)) as bounded:
        with pytest.raises(NotFoundError, match=r"recorded 3\d\d\ds ago, past the ttl .* \(60s\)"):
            bounded.get(RawResponse, OSLO)
        assert bounded.get(RawResponse, {"url": "mem://young"}).payload == b"young"
    with AuditRecorder(directory) as unbounded:
        assert unbounded.get(RawResponse, OSLO).payload == b"old"


# -- 4. replay pinned to a session or a time ---------------------------------------------


def test_replay_as_of_a_time_serves_what_had_been_fetched_by_then(tmp_path):
    directory = tmp_path / "audit"
    start = time.time() - 3 * 86400
    with AuditRecorder(directory) as writer:
        for day in range(3):
            record_at(writer, OSLO, weather_json(day), start + day * 86400)
    second_day = datetime.datetime.fromtimestamp(start + 86400 + 60)
    for as_of in (second_day, second_day.isoformat(), second_day.timestamp()):
        with AuditRecorder(directory, as_of=as_of) as pinned:
            assert json.loads(pinned.get(RawResponse, OSLO).payload)["reading"] == 1
    with AuditRecorder(directory, as_of=start - 1) as before_any:
        with pytest.raises(NotFoundError, match="never recorded fetched by"):
            before_any.get(RawResponse, OSLO)


def test_a_pinned_replay_measures_age_from_the_pin(tmp_path):
    directory = tmp_path / "audit"
    fetched = time.time() - 86400
    with AuditRecorder(directory) as writer:
        record_at(writer, OSLO, weather_json(7), fetched)
    policy = {Weather: Policy(ttl=600)}
    with AuditRecorder(directory, as_of=fetched + 60) as pinned:
        result = DataPipeline([pinned], converters(), policies=policy).get_result(Weather, OSLO)
        assert (result.value.reading, result.stale) == (7, False)
    with AuditRecorder(directory) as now:
        with pytest.raises(NotFoundError):
            DataPipeline([now], converters(), policies=policy).get(Weather, OSLO)


def test_replay_pinned_to_a_session_reproduces_that_run(recorder, server, tmp_path):
    rome = {"path": "/weather", "params": {"city": "Rome"}}
    pipeline = live(recorder, server, memory=False)
    with pipeline.session("monday") as monday:
        pipeline.get(Weather, OSLO)
    with pipeline.session("tuesday"):
        pipeline.get(Weather, OSLO, refresh=True)
        pipeline.get(Weather, rome)
    assert live(recorder, server, memory=False).get(Weather, OSLO).reading == 2
    for pin in ("monday", monday, monday[:8]):
        with AuditRecorder(recorder.directory, session=pin) as pinned:
            offline = DataPipeline([pinned], converters())
            assert offline.get(Weather, OSLO).reading == 1
            with pytest.raises(NotFoundError):
                offline.get(Weather, rome)
            with pytest.raises(NotFoundError, match=f"never recorded in session {monday[:12]}"):
                pinned.get(RawResponse, rome)
    with pytest.raises(ConfigurationError, match="cannot pin replay to session 'friday': No session"):
        AuditRecorder(recorder.directory, session="friday")
    with pytest.raises(ConfigurationError, match="as_of must be an ISO 8601 time, got 'yesterday'"):
        AuditRecorder(recorder.directory, as_of="yesterday")


def test_a_batch_replays_only_fresh_recordings(recorder, server):
    rome = {"path": "/weather", "params": {"city": "Rome"}}
    record_at(recorder, OSLO, weather_json(100), time.time() - 3600)
    record_at(recorder, rome, weather_json(200), time.time() - 5)
    pipeline = live(recorder, server, policies={Weather: Policy(ttl=60)})
    oslo, fresh_rome = pipeline.get_batch(Weather, [OSLO, rome])
    assert (oslo.reading, fresh_rome.reading) == (1, 200)
    assert [hit.params["city"] for hit in server.hits] == ["Oslo"]


# -- 7. damaged blobs are counted --------------------------------------------------------


def test_a_damaged_blob_is_counted_in_stats_and_shown_by_audit_sessions(recorder, server, capsys):
    run = live(recorder, server)
    with run.session("nightly") as nightly:
        run.get(Weather, OSLO)
    ((sha256,),) = rows(recorder, "SELECT sha256 FROM responses")
    recorder.blobs.path(sha256).write_bytes(b"rotten")
    pipeline = live(recorder, server)
    assert pipeline.get(Weather, OSLO).reading == 2  # fetched again, silently but counted
    assert pipeline.stats()["tiers"][repr(recorder)]["damaged"] == 1 and recorder.damaged == 1
    # The new answer differs, so the nightly recording stays damaged.
    assert {s["name"]: s["damaged"] for s in recorder.sessions()}["nightly"] == 1
    assert main(["audit", "--dir", str(recorder.directory), "--json", "sessions"]) == 0
    listed = {s["id"]: s for s in json.loads(capsys.readouterr().out)}
    assert listed[nightly]["damaged"] == 1
    assert main(["audit", "--dir", str(recorder.directory), "sessions"]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    assert "damaged" in header.split() and row.startswith(nightly[:12])
    assert row.split()[header.split().index("damaged") + 2] == "1"  # started and ended take two words each


def test_a_batch_counts_damaged_blobs_too(recorder, server):
    record_at(recorder, OSLO, weather_json(100), time.time())
    ((sha256,),) = rows(recorder, "SELECT sha256 FROM responses")
    recorder.blobs.path(sha256).write_bytes(b"rotten")
    pipeline = live(recorder, server)
    assert [w.reading for w in pipeline.get_batch(Weather, [OSLO])] == [1]
    assert pipeline.stats()["tiers"][repr(recorder)]["damaged"] == 1


def test_a_repaired_blob_no_longer_counts(recorder):
    record_at(recorder, OSLO, b"same bytes", time.time())
    ((sha256,),) = rows(recorder, "SELECT sha256 FROM responses")
    recorder.blobs.path(sha256).write_bytes(b"rotten")
    with pytest.raises(DamagedBlobError):
        recorder.get(RawResponse, OSLO)
    assert sum(s["damaged"] for s in recorder.sessions()) == 1
    record_at(recorder, OSLO, b"same bytes", time.time())  # the same bytes, written afresh
    assert sum(s["damaged"] for s in recorder.sessions()) == 0


# -- 5. recorded bytes and headers agree -------------------------------------------------


def agrees(response):
    """Whether a response's headers describe its payload (no encoding left, the right length)."""
    headers = {name.lower(): value for name, value in response.headers.items()}
    return "content-encoding" not in headers and headers.get("content-length") == str(len(response.payload))


def test_a_gzip_answer_is_recorded_decoded_with_headers_that_say_so(recorder):
    body = json.dumps({"city": "Oslo", "temp": 20.5, "reading": 1}).encode() * 20
    wire = gzip.compress(body)
    reply = Reply(200, wire, {"Content-Encoding": "gzip", "Content-Type": "application/json"})
    with LocalServer({"/zipped": reply}) as zipping:
        fetched = HttpSource(zipping.url, max_attempts=1).get(RawResponse, {"path": "/zipped"})
        with httpx.Client() as client:  # the wire really carried gzip, of the wire's length
            raw = client.get(f"{zipping.url}/zipped")
            assert raw.headers["content-encoding"] == "gzip" and raw.headers["content-length"] == str(
                len(wire)
            )
        pipeline = DataPipeline([recorder, HttpSource(zipping.url, max_attempts=1)])
        live_answer = pipeline.get(RawResponse, {"path": "/zipped"})
    replayed = recorder.get(RawResponse, {"path": "/zipped"})
    for response in (fetched, live_answer, replayed):
        assert response.payload == body and agrees(response)
        assert response.headers["content-type"] == "application/json"
    assert replayed.replayed and replayed.headers == live_answer.headers
    ((size, headers),) = rows(recorder, "SELECT size, headers FROM responses")
    assert size == len(body) and json.loads(headers)["content-length"] == str(len(body))


def test_plain_answers_keep_their_headers_as_sent():
    plain = {"content-type": "text/plain", "content-length": "5"}
    assert body_headers(plain, b"hello", "GET") == plain
    assert body_headers({"Content-Encoding": "identity", "Content-Length": "2"}, b"hi", "GET") == {
        "Content-Encoding": "identity",
        "Content-Length": "2",
    }
    head = {"content-encoding": "gzip", "content-length": "31"}
    assert body_headers(head, b"", "HEAD") == head
    chunked = {"transfer-encoding": "chunked", "x-id": "7"}
    assert body_headers(chunked, b"abc", "GET") == {"x-id": "7", "content-length": "3"}


def test_parameter_values_count_as_they_are_sent():
    url = "http://h/x"
    assert request_id({"url": url, "params": {"a": 1}}) == request_id({"url": url, "params": {"a": "1"}})
    assert request_id({"url": url, "params": {"a": True}}) == request_id({"url": f"{url}?a=true"})
    assert request_id({"url": url, "params": {"a": None}}) == request_id({"url": f"{url}?a="})
    assert request_id({"url": url, "params": {"a": 1.0}}) != request_id({"url": url, "params": {"a": 1}})


# -- 8. the CLI shows partitions and documents its JSON ----------------------------------


def test_audit_show_names_the_partitions_and_help_names_the_json_shapes(recorder, capsys):
    query = {"url": "mem://x", "as_of_bucket": "2026-12-01", "cache_tag": "de"}
    recorder.record(response_for(request_for(query), payload=b"x", status_code=200))
    assert main(["audit", "--dir", str(recorder.directory), "show", request_id(query)[:8]]) == 0
    assert "recorded apart by as_of_bucket=2026-12-01 cache_tag=de (never sent)" in capsys.readouterr().out
    assert main(["audit", "--dir", str(recorder.directory), "--json", "show", request_id(query)[:8]]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["as_of_bucket"], shown["cache_tag"]) == ("2026-12-01", "de")
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    assert "sessions a list of {id, name, meta" in " ".join(capsys.readouterr().out.split())


def test_a_falsy_cache_mode_is_an_error_on_a_hit_too(recorder, server):
    pipeline = live(recorder, server)
    pipeline.get(Weather, OSLO)  # now in memory: the next call would be a hit
    for mode in ("", False, 0):
        with pytest.raises(ConfigurationError, match="Unknown cache_mode"):
            pipeline.get(Weather, OSLO, cache_mode=mode)
