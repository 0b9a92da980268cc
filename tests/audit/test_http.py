"""HttpSource against a real loopback server: retries, backoff, Retry-After, timeout, politeness, errors."""

from __future__ import annotations

import email.utils
import socket
from dataclasses import dataclass

import httpx
import pytest

from datapipelines import DataPipeline, NotFoundError
from datapipelines.errors import ConfigurationError
from datapipelines.http import DEFAULT_USER_AGENT, HttpAdapter, HttpSource, retry_after_seconds
from datapipelines.remote import (
    RawResponse,
    RemoteError,
    RemoteQueryError,
    RemoteSource,
    adapter_names,
    get_adapter,
    register_adapter,
    request_for,
    request_id,
    response_for,
    unregister_adapter,
)
from datapipelines.sinks.memory import MemoryStore
from datapipelines.testing import LocalServer, Reply
from datapipelines.transformers import JSON, DataclassTransformer, RawTransformer

WEATHER = {"path": "/weather", "params": {"city": "Oslo"}}


@dataclass
class Weather:
    city: str
    temp: float


class Sleeps:
    """A fake clock whose sleep advances it, so no test waits for real."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.calls: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.now += seconds


@pytest.fixture
def server():
    routes = {
        "/weather": lambda hit: {"city": hit.params.get("city"), "temp": 21.5},
        "/echo": lambda hit: {
            "method": hit.method,
            "body": hit.body.decode(),
            "headers": hit.headers,
            "params": hit.params,
        },
    }
    with LocalServer(routes) as running:
        yield running


@pytest.fixture
def sleeps():
    return Sleeps()


def source(server, sleeps, **options):
    options.setdefault("random", lambda: 0.0)
    return HttpSource(server.url, sleep=sleeps.sleep, clock=sleeps.clock, **options)


def test_get_returns_the_exact_response_with_its_request(server, sleeps):
    response = source(server, sleeps).get(RawResponse, WEATHER)
    assert response.payload == b'{"city": "Oslo", "temp": 21.5}'
    assert (response.status_code, response.content_type) == (200, "application/json")
    assert response.url == f"{server.url}/weather?city=Oslo"
    assert response.request_id == request_id(WEATHER)
    assert (response.method, response.params, response.source, response.target) == (
        "GET",
        (("city", "Oslo"),),
        "http",
        "/weather",
    )
    assert response.attempts == 1 and response.elapsed > 0 and response.fetched_at > 0
    assert response.headers["content-length"] == str(len(response.payload))
    assert response.meta["request_id"] == response.request_id and sleeps.calls == []


def test_user_agent_source_headers_and_query_headers_are_sent(server, sleeps):
    plain = source(server, sleeps).get(RawResponse, {"path": "/echo"})
    assert RawTransformer().transform(JSON, plain)["headers"]["user-agent"] == DEFAULT_USER_AGENT
    custom = source(server, sleeps, user_agent="nightly-job/1.0", headers={"X-Team": "data"})
    echoed = RawTransformer().transform(
        JSON, custom.get(RawResponse, {"path": "/echo", "headers": {"Accept": "x/y"}})
    )
    assert echoed["headers"]["user-agent"] == "nightly-job/1.0"
    assert echoed["headers"]["x-team"] == "data" and echoed["headers"]["accept"] == "x/y"


def test_server_errors_are_retried_with_exponential_backoff(server, sleeps):
    server.script("/weather", Reply(503), Reply(500))
    response = source(server, sleeps, backoff=0.5).get(RawResponse, WEATHER)
    assert response.status_code == 200 and response.attempts == 3
    assert sleeps.calls == [0.5, 1.0]
    assert len(server.hits_for("/weather")) == 3


def test_jitter_shortens_each_delay_by_at_most_its_share(server, sleeps):
    server.script("/weather", Reply(502), Reply(504))
    source(server, sleeps, backoff=1.0, jitter=0.5, random=lambda: 1.0).get(RawResponse, WEATHER)
    assert sleeps.calls == [0.5, 1.0]
    adapter = HttpAdapter(backoff=1.0, max_backoff=4.0, jitter=0.0)
    assert [adapter.backoff_delay(n) for n in (1, 2, 3, 4, 9)] == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_retry_after_is_honoured_in_seconds_and_as_a_date(server, sleeps):
    server.script("/weather", Reply(429, headers={"Retry-After": "7"}))
    assert source(server, sleeps).get(RawResponse, WEATHER).attempts == 2
    assert sleeps.calls == [7.0]
    later = email.utils.formatdate(1_000_030, usegmt=True)
    assert retry_after_seconds(later, now=1_000_000) == pytest.approx(30.0)
    assert retry_after_seconds("not a date", now=0) is None and retry_after_seconds(None, now=0) is None


def test_a_retry_after_beyond_the_limit_gives_up_at_once(server, sleeps):
    server.script("/weather", Reply(503, headers={"Retry-After": "3600"}))
    with pytest.raises(RemoteError) as raised:
        source(server, sleeps, max_retry_after=60).get(RawResponse, WEATHER)
    assert raised.value.status == 503 and sleeps.calls == []


def test_persistent_server_errors_raise_remote_error_with_status_and_url(server, sleeps):
    server.script("/weather", *[Reply(500, {"error": "boom"})] * 3)
    with pytest.raises(RemoteError) as raised:
        source(server, sleeps, max_attempts=3).get(RawResponse, WEATHER)
    assert raised.value.status == 500
    assert raised.value.url == f"{server.url}/weather?city=Oslo"
    assert raised.value.response.payload == b'{"error": "boom"}'
    assert "500" in str(raised.value) and len(server.hits_for("/weather")) == 3


def test_404_is_not_found_and_is_not_retried(server, sleeps):
    with pytest.raises(NotFoundError, match="404"):
        source(server, sleeps).get(RawResponse, {"path": "/nowhere"})
    assert len(server.hits) == 1 and sleeps.calls == []


def test_connection_errors_are_retried_then_raised(sleeps):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = HttpSource(f"http://127.0.0.1:{port}", sleep=sleeps.sleep, random=lambda: 0.0, backoff=0.1)
    with pytest.raises(RemoteError, match="ConnectError") as raised:
        closed.get(RawResponse, WEATHER)
    assert raised.value.status is None and sleeps.calls == [0.1, 0.2]


def test_timeout_raises_and_a_retry_can_succeed(server, sleeps):
    server.script("/weather", Reply(200, {"slow": True}, delay=0.5))
    with pytest.raises(RemoteError, match="ReadTimeout"):
        source(server, sleeps, timeout=0.1, max_attempts=1).get(RawResponse, WEATHER)
    server.script("/weather", Reply(200, {"slow": True}, delay=0.5))
    response = source(server, sleeps, timeout=0.1, max_attempts=2).get(RawResponse, WEATHER)
    assert response.attempts == 2 and b"Oslo" in response.payload


def test_politeness_spaces_requests_to_one_host_only(sleeps):
    with LocalServer({"/a": {"a": 1}}) as first, LocalServer({"/b": {"b": 2}}) as second:
        polite = HttpSource(sleep=sleeps.sleep, clock=sleeps.clock, politeness=2.0)
        polite.get(RawResponse, {"url": f"{first.url}/a"})
        polite.get(RawResponse, {"url": f"{second.url}/b"})
        assert sleeps.calls == []
        polite.get(RawResponse, {"url": f"{first.url}/a"})
        assert sleeps.calls == [2.0]
        sleeps.now += 5.0
        polite.get(RawResponse, {"url": f"{first.url}/a"})
        assert sleeps.calls == [2.0]


def test_send_posts_and_is_never_retried_on_500(server, sleeps):
    api = source(server, sleeps)
    response = api.send({"path": "/echo", "body": {"name": "x"}})
    echoed = RawTransformer().transform(JSON, response)
    assert echoed["method"] == "POST" and echoed["body"] == '{"name":"x"}'
    assert echoed["headers"]["content-type"] == "application/json"
    assert response.request_body == b'{"name":"x"}'
    server.script("/echo", Reply(500))
    with pytest.raises(RemoteError):
        api.send({"path": "/echo", "method": "PUT", "body": b"raw"})
    assert server.hits[-1].method == "PUT" and sleeps.calls == []
    server.script("/echo", Reply(503))
    assert api.send({"path": "/echo", "body": "again"}).attempts == 2


def test_get_refuses_state_changing_methods(server, sleeps):
    with pytest.raises(RemoteQueryError, match="send"):
        source(server, sleeps).get(RawResponse, {"path": "/echo", "method": "POST"})
    assert server.hits == []


def test_a_query_for_another_source_is_not_found_here(server, sleeps):
    weather_api = source(server, sleeps, name="weather")
    with pytest.raises(NotFoundError, match="'http'"):
        weather_api.get(RawResponse, WEATHER)
    assert weather_api.get(RawResponse, {**WEATHER, "source": "weather"}).source == "weather"
    with pytest.raises(RemoteQueryError, match="base_url"):
        HttpSource().get(RawResponse, WEATHER)


def test_request_ids_are_canonical_and_sensitive_to_what_changes_the_answer():
    base = request_id({"path": "/w", "params": {"a": 1, "b": [2, 3]}})
    assert base == request_id({"params": {"b": [2, 3], "a": 1}, "path": "/w", "method": "get"})
    assert base != request_id({"path": "/w", "params": {"a": 1, "b": [3, 2]}})
    assert base != request_id({"path": "/w", "params": {"a": 1, "b": [2, 3]}, "headers": {"Accept": "x"}})
    assert base != request_id({"path": "/w", "params": {"a": 1, "b": [2, 3]}, "source": "other"})
    assert request_id({"path": "/w", "headers": {"Accept": "x"}}) == request_id(
        {"path": "/w", "headers": {"accept": "x"}}
    )
    assert request_for({"url": "http://h/x", "params": {"f": True}}).params == (("f", "true"),)
    assert len(base) == 64 and base == request_id({"path": "/w", "params": {"b": [2, 3], "a": 1}})


@pytest.mark.parametrize(
    "query, message",
    [
        ({"params": {"a": 1}}, "exactly one of 'url' or 'path'"),
        ({"url": "http://h", "path": "/p"}, "exactly one"),
        ({"path": "/p", "city": "Oslo"}, "Unknown key"),
        ({"path": "/p", "params": {"a": {"nested": 1}}}, "Parameter 'a'"),
        ({"path": "/p", "body": 3.5}, "'body' must be"),
        ({"path": "/p", "body": "\udcff"}, "'body' is not valid Unicode"),
        ({"path": "/p", "headers": ["Accept"]}, "'headers' must be a mapping"),
        ({"path": "/p", "headers": {"X-A": "a\r\nHost: evil"}}, "Header 'X-A'.* cannot be sent"),
        ({"path": "/p", "headers": {"X A": "1"}}, "Header 'X A'.* cannot be sent"),
        ({"path": "/p", "headers": {"X-A": "é"}}, "Header 'X-A'.* cannot be sent"),
    ],
)
def test_malformed_queries_name_what_is_wrong(query, message):
    with pytest.raises(RemoteQueryError, match=message):
        request_for(query)


def test_pipeline_from_http_to_a_dataclass_caches_the_object(server, sleeps):
    memory = MemoryStore()
    pipeline = DataPipeline(
        [memory, source(server, sleeps)], [RawTransformer(), DataclassTransformer(Weather)]
    )
    assert pipeline.get(Weather, WEATHER) == Weather("Oslo", 21.5)
    assert pipeline.get(Weather, WEATHER) == Weather("Oslo", 21.5)
    assert len(server.hits) == 1 and len(memory) == 1


def test_error_statuses_never_reach_a_cache(server, sleeps):
    memory = MemoryStore()
    pipeline = DataPipeline([memory, source(server, sleeps, max_attempts=1)], [RawTransformer()])
    server.script("/weather", Reply(500))
    with pytest.raises(RemoteError):
        pipeline.get(JSON, WEATHER)
    with pytest.raises(NotFoundError):
        pipeline.get(JSON, {"path": "/missing"})
    assert len(memory) == 0
    assert pipeline.get(JSON, WEATHER) == {"city": "Oslo", "temp": 21.5}


class CannedAdapter:
    """A non-HTTP adapter: answers from a dict of target -> bytes."""

    def __init__(self, files):
        self.files = files

    def fetch(self, request):
        payload = self.files.get(request.target)
        status = 404 if payload is None else 200
        return response_for(
            request, payload=payload or b"", status_code=status, content_type="application/json"
        )


@pytest.fixture
def canned():
    register_adapter("canned", CannedAdapter({"w.json": b'{"city": "Rome", "temp": 30}'}))
    yield
    unregister_adapter("canned")


def test_registered_adapters_plug_in_like_http(canned):
    assert "canned" in adapter_names() and isinstance(get_adapter("canned"), CannedAdapter)
    pipeline = DataPipeline([RemoteSource("canned")], [RawTransformer(), DataclassTransformer(Weather)])
    assert pipeline.get(Weather, {"source": "canned", "url": "w.json"}) == Weather("Rome", 30.0)
    with pytest.raises(NotFoundError):
        pipeline.get(Weather, {"source": "canned", "url": "other.json"})


def test_the_registry_names_unknown_and_duplicate_adapters(canned):
    with pytest.raises(ConfigurationError, match="already registered"):
        register_adapter("canned", CannedAdapter({}))
    with pytest.raises(ConfigurationError, match=r"No adapter named 'ftp'.*canned"):
        RemoteSource("ftp")
    with pytest.raises(ConfigurationError, match="fetch"):
        register_adapter("broken", object())
    with pytest.raises(ConfigurationError, match="No adapter named 'ftp'"):
        unregister_adapter("ftp")


@pytest.mark.parametrize(
    "url", ["/x", "x.example.com/weather", "ftp://127.0.0.1/x", "http:///x", "mailto:a@b"]
)
def test_a_url_that_is_not_absolute_http_is_refused_before_any_attempt(url, sleeps):
    attempts = []
    transport = httpx.MockTransport(lambda request: attempts.append(request) or httpx.Response(200))
    pipeline = DataPipeline([HttpSource(sleep=sleeps.sleep, clock=sleeps.clock, transport=transport)])
    with pytest.raises(RemoteQueryError, match="absolute http\\(s\\) URL"):
        pipeline.get(RawResponse, {"url": url})
    assert attempts == [] and sleeps.calls == []


@pytest.mark.parametrize(
    "query",
    [
        {"url": "http://127.0.0.1/x\x00"},
        {"url": "http://127.0.0.1/x\r\nHost: evil"},
        {"url": "http://127.0.0.1/x", "headers": {"X-A": "a\r\nb"}},
        {"url": "http://127.0.0.1/x", "headers": {"X-A": "\udcff"}},
        {"url": "http://xn--zz/x"},
    ],
)
def test_a_request_that_cannot_be_sent_is_refused_before_any_attempt(query, sleeps):
    attempts = []
    transport = httpx.MockTransport(lambda request: attempts.append(request) or httpx.Response(200))
    pipeline = DataPipeline([HttpSource(sleep=sleeps.sleep, clock=sleeps.clock, transport=transport)])
    with pytest.raises(RemoteQueryError, match="not a valid URL|cannot be sent"):
        pipeline.get(RawResponse, query)
    assert attempts == [] and sleeps.calls == []


@pytest.mark.parametrize("url", ["http://a..b/x", "http://" + "a" * 300 + "/x"])
def test_a_host_no_resolver_can_encode_is_a_query_error_not_retried(url, sleeps):
    # The real transport: IDNA refuses these labels before any lookup or connection.
    pipeline = DataPipeline([HttpSource(sleep=sleeps.sleep, clock=sleeps.clock)])
    with pytest.raises(RemoteQueryError, match="is not a valid URL"):
        pipeline.get(RawResponse, {"url": url})
    assert sleeps.calls == []


@pytest.mark.parametrize("base_url", ["/api", "example.com", "file:///etc"])
def test_a_base_url_that_is_not_absolute_http_is_a_configuration_error(base_url):
    with pytest.raises(ConfigurationError, match="base_url"):
        HttpSource(base_url)
