"""HttpSource: remote queries answered over HTTP(S) with httpx, as RawResponse.

Retries with exponential backoff and jitter on connection errors, 429 and 5xx
(honouring Retry-After), a politeness delay per host, a timeout and a
configurable User-Agent. ``sleep``, ``clock`` and ``random`` are injectable so
tests never wait for real. Those rules are written once, without I/O
(:class:`HttpRules`); the blocking adapter here and the async one in
:mod:`datapipelines.async_http` drive them.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random as _random
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError
from .extras import reraise_naming_extra

try:
    import httpx
except ImportError as error:
    reraise_naming_extra("HttpSource", error)

from .remote import (
    DEFAULT_SOURCE,
    Pairs,
    RawResponse,
    RemoteError,
    RemoteQueryError,
    RemoteRequest,
    RemoteSource,
    response_for,
)

LOGGER = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "datapipelines/2 (+https://github.com/meraki-analytics/datapipelines)"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A state-changing request is retried only when the server cannot have acted on it.
_UNSAFE_RETRY_STATUSES = frozenset({429, 503})
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
_SCHEMES = frozenset({"http", "https"})


def is_absolute_http_url(url: str) -> bool:
    """Whether ``url`` names a scheme this source speaks (http, https) and a host."""
    parts = urlsplit(url)
    return parts.scheme.lower() in _SCHEMES and bool(parts.hostname)


def body_headers(headers: Mapping[str, str], payload: bytes, method: str) -> dict[str, str]:
    """``headers`` made to describe ``payload``, the body as httpx hands it over (decoded).

    Content-Encoding (gzip, deflate, br...) and Transfer-Encoding describe the wire
    form, which is gone: they are dropped, and Content-Length becomes the length of
    ``payload``. A HEAD answer has no body to describe and keeps its headers.
    """
    names = {name.lower(): name for name in headers}
    encoded = names.get("content-encoding")
    wire = [name for name in (encoded, names.get("transfer-encoding")) if name is not None]
    if encoded is not None and headers[encoded].strip().lower() == "identity":
        wire.remove(encoded)
    length = names.get("content-length")
    if method == "HEAD" or (not wire and (length is None or headers[length] == str(len(payload)))):
        return dict(headers)
    described = {name: value for name, value in headers.items() if name not in wire and name != length}
    described["content-length"] = str(len(payload))
    return described


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class Wait:
    """A step of an exchange: pause ``seconds`` before going on."""

    seconds: float


@dataclass(frozen=True)
class Send:
    """A step of an exchange: make this request; its httpx.Response, or httpx error, comes back."""

    method: str
    url: str
    params: Pairs
    content: bytes | None
    headers: dict[str, str]


# What a driver feeds an exchange: the answer to its last Send (None after a Wait).
Exchange = Generator[Wait | Send, httpx.Response | None, RawResponse]


class HttpRules:
    """What to retry, how long to wait, what to record: the exchange of one request, without I/O.

    :meth:`exchange` yields :class:`Wait` and :class:`Send` steps and returns the
    RawResponse; :class:`HttpAdapter` drives it over ``httpx.Client``,
    ``AsyncHttpAdapter`` (:mod:`datapipelines.async_http`) over ``httpx.AsyncClient``,
    so both retry, back off, honour Retry-After, space requests and record alike.

    ``max_attempts`` counts the first try. The n-th retry waits
    ``min(max_backoff, backoff * 2**(n-1))``, shortened by up to ``jitter`` of
    itself at random, or what Retry-After asks when the server sent it (no retry
    when that exceeds ``max_retry_after``). ``politeness`` is the least time in
    seconds between two requests to one host.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
        timeout: float = 10.0,
        max_attempts: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        jitter: float = 0.5,
        max_retry_after: float = 120.0,
        politeness: float = 0.0,
        retry_statuses: Iterable[int] = RETRY_STATUSES,
        clock: Callable[[], float] = time.monotonic,
        random: Callable[[], float] = _random.random,
    ) -> None:
        described = type(self).__name__
        if max_attempts < 1:
            raise ConfigurationError(f"{described} max_attempts must be at least 1, got {max_attempts!r}")
        if not 0 <= jitter <= 1:
            raise ConfigurationError(f"{described} jitter must be between 0 and 1, got {jitter!r}")
        if timeout <= 0 or backoff < 0 or politeness < 0:
            raise ConfigurationError(
                f"{described} needs timeout > 0, backoff >= 0, politeness >= 0; "
                f"got {timeout!r}, {backoff!r}, {politeness!r}"
            )
        if base_url is not None and not is_absolute_http_url(base_url):
            raise ConfigurationError(
                f"{described} base_url must be an absolute http(s) URL with a host, got {base_url!r}"
            )
        self.base_url = base_url
        self.headers = {"User-Agent": user_agent, **dict(headers or {})}
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.jitter = jitter
        self.max_retry_after = max_retry_after
        self.politeness = politeness
        self.retry_statuses = frozenset(retry_statuses)
        self._clock = clock
        self._random = random
        self._next_slot: dict[str, float] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def backoff_delay(self, retry: int) -> float:
        """How long to wait before the ``retry``-th retry (1 for the first)."""
        delay = min(self.max_backoff, self.backoff * 2 ** (retry - 1))
        return delay * (1 - self.jitter * self._random())

    def exchange(self, request: RemoteRequest) -> Exchange:
        """The steps of ``request``'s exchange; returns its RawResponse, raises RemoteError."""
        url = request.url_for(self.base_url)
        if not is_absolute_http_url(url):
            # Up front: no attempt could succeed, so none is made (nor retried).
            raise RemoteQueryError(
                f"{request.source}: 'url' must be an absolute http(s) URL with a host, got {url!r}; "
                "name a relative location as 'path' under the source's base_url"
            )
        parts = urlsplit(url)
        try:
            # What the resolver does to the host, done here so both drivers refuse alike.
            (parts.hostname or "").encode("idna")
        except UnicodeError as error:
            raise RemoteQueryError(f"{request.source}: {url!r} is not a valid URL: {error}") from error
        host = parts.netloc
        statuses = self.retry_statuses if request.safe else self.retry_statuses & _UNSAFE_RETRY_STATUSES
        retryable_errors = httpx.TransportError if request.safe else _NOT_SENT
        send = Send(request.method, url, request.params, request.body, dict(request.headers))
        attempt = 0
        while True:
            attempt += 1
            polite = self._polite_delay(host)
            if polite > 0:
                yield Wait(polite)
            started = time.perf_counter()
            try:
                answer = yield send
            except (httpx.InvalidURL, UnicodeError) as error:
                # A host IDNA cannot encode (an empty or overlong label): never sent, never retried.
                raise RemoteQueryError(f"{request.source}: {url!r} is not a valid URL: {error}") from error
            except httpx.TransportError as error:
                if attempt >= self.max_attempts or not isinstance(error, retryable_errors):
                    raise RemoteError(
                        f"{request.source}: {request.method} {url} failed after {attempt} attempt(s): "
                        f"{type(error).__name__}: {error}",
                        url=url,
                    ) from error
                delay = self.backoff_delay(attempt)
                LOGGER.info(
                    "%s %s: %s, retry %d in %.3fs", request.method, url, type(error).__name__, attempt, delay
                )
                yield Wait(delay)
                continue
            assert answer is not None
            elapsed = time.perf_counter() - started
            if answer.status_code in statuses and attempt < self.max_attempts:
                wait = self._retry_delay(attempt, answer)
                if wait is not None:
                    LOGGER.info(
                        "%s %s: %d, retry %d in %.3fs",
                        request.method,
                        url,
                        answer.status_code,
                        attempt,
                        wait,
                    )
                    yield Wait(wait)
                    continue
            return response_for(
                request,
                payload=answer.content,
                status_code=answer.status_code,
                content_type=answer.headers.get("content-type"),
                headers=body_headers(answer.headers, answer.content, request.method),
                url=str(answer.url),
                elapsed=elapsed,
                attempts=attempt,
                fetched_at=time.time(),
            )

    def _polite_delay(self, host: str) -> float:
        """How long the next request to ``host`` must wait; books its slot."""
        if not self.politeness:
            return 0.0
        with self._lock:
            now = self._clock()
            slot = max(now, self._next_slot.get(host, now))
            self._next_slot[host] = slot + self.politeness
        return slot - now

    def _retry_delay(self, attempt: int, answer: httpx.Response) -> float | None:
        asked = retry_after_seconds(answer.headers.get("retry-after"), time.time())
        if asked is None:
            return self.backoff_delay(attempt)
        if asked > self.max_retry_after:
            LOGGER.warning(
                "%s asks to retry after %.0fs (limit %.0fs): giving up",
                answer.url,
                asked,
                self.max_retry_after,
            )
            return None
        return asked


class HttpAdapter(HttpRules):
    """Performs RemoteRequests over ``httpx.Client`` by the :class:`HttpRules` it is given.

    ``sleep`` is injectable (so is ``clock``, ``random``) so tests never wait for real;
    ``transport`` and ``verify`` go to the client.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        verify: bool = True,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        **rules: Any,
    ) -> None:
        super().__init__(base_url, **rules)
        self._verify = verify
        self._transport = transport
        self._sleep = sleep
        self._client: httpx.Client | None = None
        self._client_pid = 0

    @property
    def client(self) -> httpx.Client:
        # One pooled client per process: a forked child must not share the parent's sockets.
        if self._client is None or self._client_pid != os.getpid():
            with self._lock:
                if self._client is None or self._client_pid != os.getpid():
                    self._client = httpx.Client(
                        headers=self.headers,
                        timeout=self.timeout,
                        follow_redirects=True,
                        verify=self._verify,
                        transport=self._transport,
                    )
                    self._client_pid = os.getpid()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def fetch(self, request: RemoteRequest) -> RawResponse:
        return self._drive(self.exchange(request))

    def send(self, request: RemoteRequest) -> RawResponse:
        return self._drive(self.exchange(request))

    def _drive(self, steps: Exchange) -> RawResponse:
        answer: httpx.Response | None = None
        failure: Exception | None = None
        while True:
            try:
                step = steps.throw(failure) if failure is not None else steps.send(answer)
            except StopIteration as finished:
                return finished.value  # type: ignore[no-any-return]
            answer, failure = None, None
            if isinstance(step, Wait):
                self._sleep(step.seconds)
                continue
            try:
                answer = self.client.request(
                    step.method, step.url, params=step.params, content=step.content, headers=step.headers
                )
            except Exception as error:  # the exchange judges it
                failure = error


class HttpSource(RemoteSource):
    """Provides RawResponse for queries naming a ``url``, or a ``path`` under ``base_url``.

    ``name`` is the ``source`` a query must name (``"http"`` by default, which
    queries also default to). Other keyword arguments configure the
    :class:`HttpAdapter`: ``headers``, ``user_agent``, ``timeout``,
    ``max_attempts``, ``backoff``, ``jitter``, ``politeness``... Headers given
    here are sent with every request and are not part of the request id.
    """

    adapter: HttpAdapter

    def __init__(self, base_url: str | None = None, *, name: str = DEFAULT_SOURCE, **options: Any) -> None:
        super().__init__(HttpAdapter(base_url, **options), name=name)

    def __repr__(self) -> str:
        return f"HttpSource({self.adapter.base_url!r}, name={self.name!r})"

    @property
    def base_url(self) -> str | None:
        return self.adapter.base_url

    def close(self) -> None:
        self.adapter.close()

    def __enter__(self) -> HttpSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
