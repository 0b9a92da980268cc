"""AsyncHttpSource: HttpSource for coroutines, on ``httpx.AsyncClient``.

It follows the very rules of :class:`~datapipelines.http.HttpSource` (retries,
back-off, Retry-After, politeness, the RawResponse it records): both drive
:class:`~datapipelines.http.HttpRules`. Its ``get`` handler is ``async def``,
for the async pipeline API, which awaits it; a blocking call, where no event
loop runs, is refused with a ConfigurationError.
"""

from __future__ import annotations

import asyncio
import functools
import os
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .context import PipelineContext
from .data_source import DataSource
from .errors import ConfigurationError, NotFoundError
from .flight import running_loop
from .http import Exchange, HttpRules, Wait, httpx
from .remote import (
    DEFAULT_SOURCE,
    RawResponse,
    RemoteRequest,
    addressed_request,
    checked,
    safe_request,
    sending,
    sent,
)


def _awaited_only(dispatcher: Any) -> Any:
    """``dispatcher``, refusing calls made where no event loop runs (they could never be awaited)."""

    @functools.wraps(dispatcher)  # with its register and registered_types
    def awaited(self: Any, type: Any, query: Any, context: Any = None) -> Any:
        if running_loop() is None:
            raise ConfigurationError(
                f"{self!r} is for the async pipeline API (await pipeline.aget...): a blocking call "
                "has no event loop to run it on; give a blocking pipeline HttpSource instead"
            )
        return dispatcher(self, type, query, context)

    return awaited


class AsyncHttpAdapter(HttpRules):
    """Performs RemoteRequests over ``httpx.AsyncClient`` by the same :class:`HttpRules`.

    One client per event loop (and process): an AsyncClient's connections belong
    to the loop that opened them. ``sleep`` is a coroutine function, injectable so
    tests never wait for real.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        verify: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        **rules: Any,
    ) -> None:
        super().__init__(base_url, **rules)
        self._verify = verify
        self._transport = transport
        self._sleep = sleep
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, httpx.AsyncClient]]
        self._clients = weakref.WeakKeyDictionary()

    @property
    def client(self) -> httpx.AsyncClient:
        """The running event loop's client, made on first use."""
        loop = asyncio.get_running_loop()
        made = self._clients.get(loop)
        if made is None or made[0] != os.getpid():
            client = httpx.AsyncClient(
                headers=self.headers,
                timeout=self.timeout,
                follow_redirects=True,
                verify=self._verify,
                transport=self._transport,
            )
            made = self._clients[loop] = (os.getpid(), client)
        return made[1]

    async def aclose(self) -> None:
        """Close the running event loop's client, if it made one."""
        made = self._clients.pop(asyncio.get_running_loop(), None)
        if made is not None:
            await made[1].aclose()

    async def afetch(self, request: RemoteRequest) -> RawResponse:
        return await self._drive(self.exchange(request))

    async def asend(self, request: RemoteRequest) -> RawResponse:
        return await self._drive(self.exchange(request))

    async def _drive(self, steps: Exchange) -> RawResponse:
        answer: httpx.Response | None = None
        failure: Exception | None = None
        while True:
            try:
                step = steps.throw(failure) if failure is not None else steps.send(answer)
            except StopIteration as finished:
                return finished.value  # type: ignore[no-any-return]
            answer, failure = None, None
            if isinstance(step, Wait):
                await self._sleep(step.seconds)
                continue
            try:
                answer = await self.client.request(
                    step.method, step.url, params=step.params, content=step.content, headers=step.headers
                )
            except Exception as error:  # the exchange judges it
                failure = error


class AsyncHttpSource(DataSource):
    """:class:`~datapipelines.http.HttpSource` for the async pipeline API: ``await``-ed, same answers.

    Takes the same arguments (``base_url``, ``name``, and the options of
    :class:`~datapipelines.http.HttpRules`), except that ``sleep`` is a coroutine
    function and ``transport`` an ``httpx.AsyncBaseTransport``. Close it with
    ``await source.aclose()`` or ``async with``, on each event loop that used it.
    """

    adapter: AsyncHttpAdapter

    def __init__(self, base_url: str | None = None, *, name: str = DEFAULT_SOURCE, **options: Any) -> None:
        self.adapter = AsyncHttpAdapter(base_url, **options)
        self.name = name

    def __repr__(self) -> str:
        return f"AsyncHttpSource({self.adapter.base_url!r}, name={self.name!r})"

    @property
    def base_url(self) -> str | None:
        return self.adapter.base_url

    def request(self, query: Mapping[str, Any]) -> RemoteRequest:
        """The request ``query`` names, checked to be addressed to this source."""
        return addressed_request(query, self.name)

    @DataSource.dispatch
    def get(self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        """A coroutine fetching the raw response for ``query`` (a safe method: GET or HEAD)."""

    @DataSource.dispatch
    def get_many(self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        """A remote request answers one value; many-item queries are not found here."""

    @get.register(RawResponse)
    async def _get_raw(self, query: Mapping[str, Any], context: PipelineContext | None = None) -> RawResponse:
        request, pipeline = safe_request(self, query, context, sender="asend")
        return checked(await self.adapter.afetch(request), pipeline)

    @get_many.register(RawResponse)
    async def _get_many_raw(self, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        raise NotFoundError(f"{self!r} answers one request per query, not many: {query!r}")

    # A blocking caller (a blocking pipeline) would get a coroutine it never awaits, and cache
    # it: refused where no event loop runs, which is where blocking callers are.
    get = _awaited_only(get)
    get_many = _awaited_only(get_many)

    async def asend(self, query: Mapping[str, Any], *, pipeline: Any = None) -> RawResponse:
        """:meth:`HttpSource.send <datapipelines.remote.RemoteSource.send>` for coroutines."""
        return sent(await self.adapter.asend(self.request(sending(query))), pipeline)

    async def aclose(self) -> None:
        await self.adapter.aclose()

    async def __aenter__(self) -> AsyncHttpSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
