"""AsyncHttpSource against a real loopback server, side by side with HttpSource: one set of rules.

Each scenario runs through both sources (``way``): the blocking HttpSource and the
AsyncHttpSource awaited under asyncio.run, and must behave and record alike.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from datapipelines import AsyncHttpSource, DataPipeline, NotFoundError, PipelineContext
from datapipelines.errors import ConfigurationError
from datapipelines.http import HttpSource
from datapipelines.remote import RawResponse, RemoteError, RemoteQueryError, request_id
from datapipelines.sinks.audit import AuditRecorder
from datapipelines.sinks.memory import MemoryStore
from datapipelines.testing import LocalServer, Reply
from tests.audit.test_audit import rows

WEATHER = {"path": "/weather", "params": {"city": "Oslo"}}
WAYS = ["blocking", "async"]


class Sleeps:
    """A fake clock whose sleeps (blocking or awaited) advance it, so no test waits for real."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.calls: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.calls.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def server():
    routes = {
        "/weather": lambda hit: {"city": hit.params.get("city"), "temp": 21.5},
        "/echo": lambda hit: {"method": hit.method, "body": hit.body.decode()},
    }
    with LocalServer(routes) as running:
        yield running


@pytest.fixture
def sleeps():
    return Sleeps()


class Way:
    """One source, blocking or async, behind blocking calls, so a scenario is written once."""

    def __init__(self, way: str, base_url: str | None, sleeps: Sleeps, **options: Any) -> None:
        options.setdefault("random", lambda: 0.0)
        options.setdefault("clock", sleeps.clock)
        self.is_async = way == "async"
        if self.is_async:
            self.source: Any = AsyncHttpSource(base_url, sleep=sleeps.asleep, **options)
        else:
            self.source = HttpSource(base_url, sleep=sleeps.sleep, **options)

    def _run(self, call: Callable[[], Any]) -> Any:
        if not self.is_async:
            try:
                return call()
            finally:
                self.source.close()

        async def awaited() -> Any:
            try:
                return await call()
            finally:
                await self.source.aclose()

        return asyncio.run(awaited())

    def get(self, query: Any, context: Any = None) -> RawResponse:
        return self._run(lambda: self.source.get(RawResponse, query, context))  # type: ignore[no-any-return]

    def send(self, query: Any, pipeline: Any = None) -> RawResponse:
        send = self.source.asend if self.is_async else self.source.send
        return self._run(lambda: send(query, pipeline=pipeline))  # type: ignore[no-any-return]


@pytest.fixture(params=WAYS)
def way(request, server, sleeps) -> Callable[..., Way]:
    return lambda base_url=server.url, **options: Way(request.param, base_url, sleeps, **options)


def test_both_sources_answer_the_same_response(server, sleeps):
    blocking, awaited = (Way(kind, server.url, sleeps).get(WEATHER) for kind in WAYS)
    assert awaited.request_id == request_id(WEATHER) and awaited.payload == b'{"city": "Oslo", "temp": 21.5}'
    assert awaited.attempts == 1 and awaited.elapsed > 0 and awaited.fetched_at > 0
    varying = {"elapsed", "fetched_at", "headers"}
    fields = [field.name for field in dataclasses.fields(RawResponse) if field.name not in varying]
    assert [getattr(awaited, name) for name in fields] == [getattr(blocking, name) for name in fields]
    date = {"date"}  # the server's clock
    assert {k: v for k, v in awaited.headers.items() if k.lower() not in date} == {
        k: v for k, v in blocking.headers.items() if k.lower() not in date
    }


def test_server_errors_are_retried_with_exponential_backoff(way, server, sleeps):
    server.script("/weather", Reply(503), Reply(500))
    response = way(backoff=0.5).get(WEATHER)
    assert response.status_code == 200 and response.attempts == 3
    assert sleeps.calls == [0.5, 1.0] and len(server.hits_for("/weather")) == 3


def test_retry_after_is_honoured_and_a_long_one_gives_up(way, server, sleeps):
    server.script("/weather", Reply(429, headers={"Retry-After": "7"}))
    assert way().get(WEATHER).attempts == 2 and sleeps.calls == [7.0]
    server.script("/weather", Reply(503, headers={"Retry-After": "3600"}))
    with pytest.raises(RemoteError) as raised:
        way(max_retry_after=60).get(WEATHER)
    assert raised.value.status == 503 and sleeps.calls == [7.0]


def test_persistent_errors_raise_remote_error_and_404_is_not_found(way, server, sleeps):
    server.script("/weather", *[Reply(500, {"error": "boom"})] * 2)
    with pytest.raises(RemoteError) as raised:
        way(max_attempts=2).get(WEATHER)
    assert raised.value.status == 500 and raised.value.response.payload == b'{"error": "boom"}'
    with pytest.raises(NotFoundError, match="404"):
        way().get({"path": "/nowhere"})
    assert len(server.hits) == 3 and sleeps.calls == [0.5]


def test_connection_errors_are_retried_then_raised(way, sleeps):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RemoteError, match="ConnectError") as raised:
        way(f"http://127.0.0.1:{port}", backoff=0.1).get(WEATHER)
    assert raised.value.status is None and sleeps.calls == [0.1, 0.2]


def test_a_timeout_raises_and_a_retry_can_succeed(way, server):
    server.script("/weather", Reply(200, {"slow": True}, delay=0.5))
    with pytest.raises(RemoteError, match="ReadTimeout"):
        way(timeout=0.1, max_attempts=1).get(WEATHER)
    server.script("/weather", Reply(200, {"slow": True}, delay=0.5))
    assert way(timeout=0.1, max_attempts=2).get(WEATHER).attempts == 2


def test_politeness_spaces_requests_to_one_host_only(way, sleeps):
    with LocalServer({"/a": {"a": 1}}) as first, LocalServer({"/b": {"b": 2}}) as second:
        polite = way(None, politeness=2.0)
        queries = [{"url": f"{first.url}/a"}, {"url": f"{second.url}/b"}, {"url": f"{first.url}/a"}]
        if polite.is_async:

            async def all_three() -> None:
                for query in queries:
                    await polite.source.get(RawResponse, query)
                await polite.source.aclose()

            asyncio.run(all_three())
        else:
            for query in queries:
                polite.get(query)  # closes its client after each: the spacing is kept by the rules
        assert sleeps.calls == [2.0]


def test_politeness_spaces_concurrent_requests_to_one_host(server):
    source = AsyncHttpSource(server.url, politeness=0.05)  # the real clock and asyncio.sleep

    async def at_once() -> float:
        async with source:
            cities = [{"path": "/weather", "params": {"city": f"c{n}"}} for n in range(4)]
            started = time.monotonic()
            await asyncio.gather(*(source.get(RawResponse, query) for query in cities))
            return started

    started = asyncio.run(at_once())
    arrivals = sorted(hit.at for hit in server.hits)  # the server's clock is this process's
    assert len(arrivals) == 4
    # The n-th request may leave no sooner than n slots after the first was booked.
    assert all(arrival - started >= n * 0.05 for n, arrival in enumerate(arrivals))


def test_send_posts_is_not_retried_on_500_but_is_on_503(way, server, sleeps):
    api = way()
    assert b'"method": "POST"' in api.send({"path": "/echo", "body": {"name": "x"}}).payload
    server.script("/echo", Reply(500))
    with pytest.raises(RemoteError):
        api.send({"path": "/echo", "method": "PUT", "body": b"raw"})
    assert sleeps.calls == []
    server.script("/echo", Reply(503))
    assert api.send({"path": "/echo", "body": "again"}).attempts == 2


def test_get_refuses_state_changing_methods_naming_the_call_that_makes_them(way, server):
    source = way()
    sender = "asend" if source.is_async else "send"
    with pytest.raises(RemoteQueryError, match=rf"call {sender}\(query\)"):
        source.get({"path": "/echo", "method": "POST"})
    with pytest.raises(NotFoundError, match="'http'"):
        way(name="weather").get(WEATHER)
    assert server.hits == []


def test_a_url_that_cannot_be_sent_is_refused_before_any_attempt(sleeps):
    attempts: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda request: attempts.append(request) or httpx.Response(200))
    mocked = AsyncHttpSource(sleep=sleeps.asleep, transport=transport)
    real = AsyncHttpSource(sleep=sleeps.asleep)  # IDNA refuses the host before any connection

    async def main() -> None:
        with pytest.raises(RemoteQueryError, match="absolute http"):
            await mocked.get(RawResponse, {"url": "/x"})
        with pytest.raises(RemoteQueryError, match="not a valid URL"):
            await real.get(RawResponse, {"url": "http://a..b/x"})
        assert (await mocked.get(RawResponse, {"url": "http://127.0.0.1/ok"})).status_code == 200
        await mocked.aclose()
        await real.aclose()

    asyncio.run(main())
    assert len(attempts) == 1 and sleeps.calls == []


def test_bad_settings_are_configuration_errors_naming_the_adapter():
    with pytest.raises(ConfigurationError, match="AsyncHttpAdapter max_attempts"):
        AsyncHttpSource(max_attempts=0)
    with pytest.raises(ConfigurationError, match="AsyncHttpAdapter base_url"):
        AsyncHttpSource("example.com")


def test_many_requests_at_once_share_one_client_per_loop(server):
    source = AsyncHttpSource(server.url)
    clients: list[httpx.AsyncClient] = []

    async def burst() -> list[RawResponse]:
        answers = await asyncio.gather(
            *(source.get(RawResponse, {"path": "/weather", "params": {"city": f"c{n}"}}) for n in range(20))
        )
        clients.append(source.adapter.client)
        async with source:
            return answers

    for _ in range(2):  # two loops in sequence
        answers = asyncio.run(burst())
        expected = [f'{{"city": "c{n}", "temp": 21.5}}'.encode() for n in range(20)]
        assert [answer.payload for answer in answers] == expected
    threads = [threading.Thread(target=lambda: asyncio.run(burst())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(clients) == 4 and len({id(client) for client in clients}) == 4
    assert all(client.is_closed for client in clients) and len(server.hits) == 80


def test_a_blocking_pipeline_given_an_async_source_fails_naming_the_fix(server):
    memory = MemoryStore()
    source = AsyncHttpSource(server.url)
    pipeline = DataPipeline([memory, source])
    refused = r"AsyncHttpSource\(.*async pipeline API.*HttpSource instead"
    with pytest.raises(ConfigurationError, match=refused):
        pipeline.get(RawResponse, WEATHER)
    with pytest.raises(ConfigurationError, match="no event loop"):
        source.get_many(RawResponse, WEATHER)
    assert server.hits == [] and len(memory) == 0
    assert source.provides == {RawResponse}


def test_the_same_requests_through_both_record_the_same_rows(tmp_path, server, sleeps):
    """Request ids, statuses and payload blobs in the AuditRecorder, for answers and errors alike."""
    queries = [WEATHER, {"path": "/weather", "params": {"city": "Rome"}}, {"path": "/nowhere"}, WEATHER]
    recorded = {}
    for kind in WAYS:
        server.script("/weather", Reply(503), Reply(500, {"error": "down"}))
        with AuditRecorder(tmp_path / kind) as recorder:
            way = Way(kind, server.url, sleeps, max_attempts=2)
            pipeline = DataPipeline([recorder, way.source])
            context = PipelineContext({PipelineContext.Keys.PIPELINE: pipeline})
            for query in queries:
                try:
                    response = way.get(query, context)
                except (RemoteError, NotFoundError):
                    continue
                # What a pipeline does with an answer: write it back into the recorder.
                recorder.put(RawResponse, response, context)
            way.send({"path": "/echo", "body": {"n": 1}}, pipeline=pipeline)
            recorded[kind] = rows(
                recorder,
                "SELECT r.request_id, r.status, r.sha256, r.attempts, q.method, q.target, q.params "
                "FROM responses r JOIN requests q ON q.id = r.request_id ORDER BY r.id",
            )
    assert recorded["async"] == recorded["blocking"]
    statuses = [status for _, status, *_ in recorded["async"]]
    assert statuses == [500, 200, 404, 200, 200]  # the 503 before the 500 was retried, not recorded
