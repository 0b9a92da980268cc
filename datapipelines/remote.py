"""Remote requests and their raw responses, shared by remote sources and the audit recorder.

A query names one remote request with these keys (only ``url`` or ``path`` is required):

``source``  the name of the source that answers it (default ``"http"``)
``method``  ``"GET"`` (default), or ``"POST"``/``"PUT"``/... for :meth:`RemoteSource.send`
``url``     an absolute URL, or
``path``    a path joined to the source's base URL
``params``  the query-string parameters, a mapping of scalars or lists of scalars
``body``    the request body: bytes, str (UTF-8), or a dict/list sent as JSON
``headers`` the request headers that change the answer (``Accept``, ``Accept-Language``...)
``as_of_bucket``, ``cache_tag``  partitions: part of the request id, never sent (see
            :func:`partition`)

:func:`request_for` turns a query into a :class:`RemoteRequest` without knowing the
source, so the recorder computes the same request id as the source that fetched it.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import hashlib
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from .context import PipelineContext
from .data_source import DataSource
from .errors import ConfigurationError, DataPipelinesError, NotFoundError

DEFAULT_SOURCE = "http"
# Keys that separate recordings of one wire request (mxm-dataio's names): in the id, never sent.
PARTITION_KEYS = ("as_of_bucket", "cache_tag")
QUERY_KEYS = frozenset({"source", "method", "url", "path", "params", "body", "headers", *PARTITION_KEYS})
# A header, flag or parameter whose name contains one of these holds a credential: its value is
# never written to the audit store (a header still counts in the request id).
SECRET_WORDS = ("auth", "token", "key", "secret", "password", "passwd", "pwd", "cookie", "credential")
REDACTED = "<redacted>"
_SAFE_METHODS = frozenset({"GET", "HEAD"})
_PARAM_SCALARS = (str, int, float, bool, type(None))
_DEFAULT_PORTS = {"http": 80, "https": 443}

Pairs = tuple[tuple[str, str], ...]


class RemoteError(DataPipelinesError):
    """A remote source answered with an error status (other than 404) or could not be reached.

    ``status`` is None when no response arrived at all; ``response`` is the
    :class:`RawResponse` when one did.
    """

    def __init__(
        self, message: str, *, status: int | None = None, url: str = "", response: RawResponse | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.url = url
        self.response = response


class RemoteQueryError(DataPipelinesError, ValueError):
    """A query does not describe a remote request (no ``url``/``path``, bad ``params``...)."""


@dataclass(frozen=True)
class RemoteRequest:
    """One remote request in canonical form; ``id`` is its deterministic request id."""

    source: str
    method: str
    target: str  # the URL (canonical: see canonical_url) or the path, without its query string
    params: Pairs = ()  # the query string's parameters and the query's, sorted by name
    body: bytes | None = None
    headers: Pairs = ()  # lower-case names, sorted
    is_path: bool = False
    partition: Pairs = ()  # (as_of_bucket / cache_tag, value) pairs that are set: never sent

    @functools.cached_property
    def id(self) -> str:
        body = hashlib.sha256(self.body).hexdigest() if self.body is not None else None
        canonical = [self.source, self.method, self.target, list(self.params), body, list(self.headers)]
        if self.partition:
            # Only when set, so the ids of requests without partitions stay what they were.
            canonical.append(list(self.partition))
        text = json.dumps(canonical, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def url_for(self, base_url: str | None) -> str:
        """The URL to call: ``target`` itself, or joined to ``base_url`` when it is a path."""
        if not self.is_path:
            return self.target
        if not base_url:
            raise RemoteQueryError(
                f"Query names path {self.target!r} but source {self.source!r} has no base_url; "
                "give the source a base_url or the query an absolute 'url'"
            )
        return base_url.rstrip("/") + "/" + self.target.lstrip("/")

    @property
    def safe(self) -> bool:
        return self.method in _SAFE_METHODS


def is_secret_name(name: str) -> bool:
    """Whether a header, flag or parameter called ``name`` holds a credential (see SECRET_WORDS).

    Deliberately broad (``Authorization``, ``X-Api-Key``, ``--api-token``, ``DB_PASSWORD``,
    ``Set-Cookie``...): a value masked needlessly costs less than a secret kept.
    """
    lowered = name.lower()
    return any(word in lowered for word in SECRET_WORDS)


def mask_secrets(headers: Mapping[str, str]) -> dict[str, str]:
    """``headers`` as they may be written down: credentials replaced by ``<redacted>``."""
    return {k: (REDACTED if is_secret_name(k) else v) for k, v in headers.items()}


def _param_text(value: Any) -> str:
    # The same spelling httpx puts on the wire, so the id matches what was sent.
    if value is True:
        return "true"
    if value is False:
        return "false"
    return "" if value is None else str(value)


def _params(raw: Any, query: Mapping[str, Any]) -> Pairs:
    if raw is None:
        return ()
    if not isinstance(raw, Mapping):
        raise RemoteQueryError(f"'params' must be a mapping, got {type(raw).__name__} in query {query!r}")
    pairs: list[tuple[str, str]] = []
    for key, value in raw.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if not isinstance(item, _PARAM_SCALARS):
                raise RemoteQueryError(
                    f"Parameter {key!r} has unsupported value {item!r} ({type(item).__name__}) "
                    f"in query {query!r}"
                )
            pairs.append((str(key), _param_text(item)))
    # Stable sort by name keeps the order of a repeated parameter's values.
    return tuple(sorted(pairs, key=lambda pair: pair[0]))


def canonical_url(url: str) -> tuple[str, Pairs]:
    """``url`` without its query string and fragment, and the parameters of that query string.

    Scheme and host are lower-cased and a default port (80 for http, 443 for
    https) is dropped; the path keeps its case and spelling. A URL already in
    that form without a query string comes back unchanged.
    """
    try:
        split = urlsplit(url)
        port = split.port
    except ValueError as error:
        raise RemoteQueryError(f"{url!r} is not a valid URL: {error}") from None
    netloc = split.netloc
    if split.hostname is not None:
        userinfo, _, _ = netloc.rpartition("@")
        host = f"[{split.hostname}]" if ":" in split.hostname else split.hostname
        if port is not None and port != _DEFAULT_PORTS.get(split.scheme):
            host = f"{host}:{port}"
        netloc = f"{userinfo}@{host}" if userinfo else host
    target = urlunsplit((split.scheme, netloc, split.path, "", ""))
    return target, tuple(parse_qsl(split.query, keep_blank_values=True))


def _split_path(path: str) -> tuple[str, Pairs]:
    """A ``path`` without its query string and fragment, and the parameters of that query string."""
    path, _, query = path.partition("#")[0].partition("?")
    return path, tuple(parse_qsl(query, keep_blank_values=True))


def _partition_value(name: str, value: Any, query: Any) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        return value.isoformat()
    raise RemoteQueryError(f"{name!r} must be a non-empty str or a date, got {value!r} in query {query!r}")


def _partition(query: Mapping[str, Any], session: Pairs) -> Pairs:
    """The query's partitions, over those of the current :func:`partition` block."""
    given = dict(session)
    for name in PARTITION_KEYS:
        value = query.get(name)
        if value is not None:
            given[name] = _partition_value(name, value, query)
    return tuple((name, given[name]) for name in PARTITION_KEYS if name in given)


_session_partition: contextvars.ContextVar[Pairs] = contextvars.ContextVar(
    "datapipelines_partition", default=()
)


@contextlib.contextmanager
def partition(*, as_of_bucket: Any = None, cache_tag: Any = None) -> Iterator[Pairs]:
    """Inside the block, requests carry these partitions unless their query names its own.

    ``as_of_bucket`` (e.g. the day: ``"2026-12-02"``) and ``cache_tag`` (e.g. a
    locale) separate recordings of the same wire request: they are part of the
    request id and are never sent. ``pipeline.session(..., as_of_bucket=...)``
    opens one of these blocks. None leaves a partition as the enclosing block has it.
    """
    outer = dict(_session_partition.get())
    for name, value in (("as_of_bucket", as_of_bucket), ("cache_tag", cache_tag)):
        if value is not None:
            outer[name] = _partition_value(name, value, {name: value})
    pairs = tuple((name, outer[name]) for name in PARTITION_KEYS if name in outer)
    token = _session_partition.set(pairs)
    try:
        yield pairs
    finally:
        _session_partition.reset(token)


def _body(raw: Any, query: Mapping[str, Any]) -> tuple[bytes | None, bool]:
    """The body bytes, and whether they are JSON we encoded."""
    if raw is None:
        return None, False
    if isinstance(raw, bytes):
        return raw, False
    try:
        if isinstance(raw, str):
            return raw.encode("utf-8"), False
        if isinstance(raw, (Mapping, list)):
            return json.dumps(raw, separators=(",", ":"), sort_keys=True).encode("utf-8"), True
    except UnicodeEncodeError as error:
        reason = error.reason
        raise RemoteQueryError(f"'body' is not valid Unicode text ({reason}) in query {query!r}") from None
    raise RemoteQueryError(
        f"'body' must be bytes, str, dict or list, got {type(raw).__name__} in query {query!r}"
    )


# RFC 9110: a header name is a token; a value is visible ASCII, spaces and tabs (no CR, LF or NUL).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _headers(raw: Any, query: Mapping[str, Any]) -> dict[str, str]:
    """The query's headers, names lower-cased; one that could never be sent is refused up front."""
    if not isinstance(raw, Mapping):
        raise RemoteQueryError(f"'headers' must be a mapping, got {type(raw).__name__} in query {query!r}")
    headers = {}
    for name, value in raw.items():
        name, value = str(name), str(value)
        if not _HEADER_NAME.fullmatch(name) or not _HEADER_VALUE.fullmatch(value):
            raise RemoteQueryError(
                f"Header {name!r}: {value!r} cannot be sent (names are HTTP tokens, values printable "
                f"ASCII without CR or LF) in query {query!r}"
            )
        headers[name.lower()] = value
    return headers


def request_for(query: Mapping[str, Any]) -> RemoteRequest:
    """The canonical request a query names; raises RemoteQueryError when it names none.

    A miss asks for the same query's request twice (the recorder's replay, then the
    source), so requests without a body are memoised by the query's repr, which
    keeps value types apart.
    """
    session = _session_partition.get()
    if isinstance(query, Mapping) and query.get("body") is not None:
        return _canonical_request(query, session)  # bodies can be large: not worth keeping their repr
    memo_key: Any = (repr(query), session) if session else repr(query)
    request = _requests.get(memo_key)
    if request is None:
        request = _canonical_request(query, session)
        if len(_requests) >= _REQUEST_MEMO_LIMIT:
            _requests.clear()
        _requests[memo_key] = request
    return request


_REQUEST_MEMO_LIMIT = 16_384
_requests: dict[Any, RemoteRequest] = {}


def _canonical_request(query: Mapping[str, Any], session: Pairs = ()) -> RemoteRequest:
    if not isinstance(query, Mapping):
        raise RemoteQueryError(f"A remote query must be a mapping, got {type(query).__name__}")
    unknown = set(query) - QUERY_KEYS
    if unknown:
        raise RemoteQueryError(
            f"Unknown key(s) {sorted(map(str, unknown))} in remote query {query!r}; "
            f"known keys: {sorted(QUERY_KEYS)} (put query-string values under 'params')"
        )
    url, path = query.get("url"), query.get("path")
    if (url is None) == (path is None):
        raise RemoteQueryError(f"A remote query needs exactly one of 'url' or 'path': {query!r}")
    target = url if url is not None else path
    if not isinstance(target, str) or not target:
        raise RemoteQueryError(f"'url'/'path' must be a non-empty str in query {query!r}")
    if _CONTROL.search(target) and (url is None or target.lower().startswith(("http:", "https:"))):
        # HTTP cannot carry them, and urlsplit would silently drop CR, LF and tab, sending
        # another request than the one named. Other adapters' targets are theirs to judge.
        raise RemoteQueryError(f"{target!r} is not a valid URL: it holds a control character")
    target, in_target = canonical_url(target) if url is not None else _split_path(target)
    body, is_json = _body(query.get("body"), query)
    headers = _headers(query.get("headers") or {}, query)
    if is_json:
        headers.setdefault("content-type", "application/json")
    params = _params(query.get("params"), query)
    if in_target:
        params = tuple(sorted(in_target + params, key=lambda pair: pair[0]))
    return RemoteRequest(
        source=str(query.get("source", DEFAULT_SOURCE)),
        method=str(query.get("method", "GET")).upper(),
        target=target,
        params=params,
        body=body,
        headers=tuple(sorted(headers.items())),
        is_path=url is None,
        partition=_partition(query, session),
    )


def request_id(query: Mapping[str, Any]) -> str:
    """The deterministic request id of a query: the same in the source and in the recorder."""
    return request_for(query).id


@dataclass(frozen=True)
class RawResponse:
    """The exact bytes a remote source answered, with what is needed to record and replay them."""

    payload: bytes
    status_code: int
    content_type: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    url: str = ""  # the final URL, after redirects
    elapsed: float = 0.0  # seconds taken by the answering attempt
    request_id: str = ""
    method: str = "GET"
    params: Pairs = ()
    source: str = DEFAULT_SOURCE
    target: str = ""  # the URL or path the query named
    request_body: bytes | None = None
    request_headers: Mapping[str, str] = field(default_factory=dict)  # the identity headers
    attempts: int = 1
    fetched_at: float = 0.0  # Unix time the answer arrived
    replayed: bool = False  # served from an audit store rather than fetched
    partition: Pairs = ()  # the request's as_of_bucket / cache_tag, never sent

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def meta(self) -> dict[str, Any]:
        """Transport metadata as a plain dict (the shape mxm-style adapters return)."""
        return {
            "url": self.url,
            "headers": dict(self.headers),
            "elapsed": self.elapsed,
            "attempts": self.attempts,
            "request_id": self.request_id,
        }


def response_for(request: RemoteRequest, **fields: Any) -> RawResponse:
    """A RawResponse for ``request``: the request-side fields filled in from it."""
    return RawResponse(
        request_id=request.id,
        method=request.method,
        params=request.params,
        source=request.source,
        target=request.target,
        request_body=request.body,
        request_headers=dict(request.headers),
        partition=request.partition,
        **fields,
    )


def check_status(response: RawResponse) -> RawResponse:
    """``response`` if it is 2xx; NotFoundError for 404; RemoteError for any other status."""
    if response.ok:
        return response
    where = response.url or response.target
    if response.status_code == 404:
        raise NotFoundError(f"{response.source} answered 404 Not Found for {response.method} {where}")
    raise RemoteError(
        f"{response.source} answered {response.status_code} for {response.method} {where} "
        f"(request {response.request_id[:12]})",
        status=response.status_code,
        url=where,
        response=response,
    )


# -- adapters ----------------------------------------------------------------------


class ResponseRecorder(ABC):
    """A pipeline element that keeps every remote response, errors included, and the sessions
    they were made in (the audit recorder).

    An element is one because it says so, by subclassing or ``ResponseRecorder.register(cls)``;
    a method that happens to be called ``record`` (a catalogue's, say) makes nothing a recorder.
    """

    @abstractmethod
    def record(self, response: RawResponse, context: PipelineContext | None = None) -> Any:
        """Keep ``response`` in the current session."""

    @abstractmethod
    def open_session(self, session_id: str, name: str, meta: Mapping[str, Any]) -> None:
        """Start the session that the calls inside ``DataPipeline.session`` belong to."""

    @abstractmethod
    def close_session(self, session_id: str) -> None:
        """End the session ``open_session`` started."""


@runtime_checkable
class Adapter(Protocol):
    """Performs remote requests: ``fetch`` for safe methods; ``send`` (optional) for the rest."""

    def fetch(self, request: RemoteRequest) -> RawResponse: ...


_adapters: dict[str, Adapter] = {}
_adapters_lock = threading.Lock()


def register_adapter(name: str, adapter: Adapter) -> None:
    """Make ``adapter`` available to :class:`RemoteSource` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"An adapter name must be a non-empty str, got {name!r}")
    if not callable(getattr(adapter, "fetch", None)):
        raise ConfigurationError(f"Adapter {name!r} ({type(adapter).__name__}) has no fetch(request) method")
    with _adapters_lock:
        if name in _adapters:
            raise ConfigurationError(
                f"An adapter named {name!r} is already registered ({type(_adapters[name]).__name__}); "
                "unregister_adapter it first"
            )
        _adapters[name] = adapter


def unregister_adapter(name: str) -> Adapter:
    """Remove and return the adapter registered under ``name``."""
    with _adapters_lock:
        try:
            return _adapters.pop(name)
        except KeyError:
            raise ConfigurationError(_unknown_adapter(name)) from None


def get_adapter(name: str) -> Adapter:
    """The adapter registered under ``name``."""
    try:
        return _adapters[name]
    except KeyError:
        raise ConfigurationError(_unknown_adapter(name)) from None


def adapter_names() -> list[str]:
    return sorted(_adapters)


def _unknown_adapter(name: str) -> str:
    known = ", ".join(sorted(_adapters)) or "none"
    return f"No adapter named {name!r} is registered (registered: {known})"


# -- the source ----------------------------------------------------------------------


class RemoteSource(DataSource):
    """Provides :class:`RawResponse` for remote queries through an adapter.

    ``adapter`` is an instance or the name of a registered one; ``name`` (default:
    the registered name, else ``"http"``) is the ``source`` a query must name for
    this source to answer it. Error statuses never reach a sink: 404 raises
    NotFoundError, others RemoteError; before raising, the response is handed to
    every :class:`ResponseRecorder` of the pipeline (the audit recorder), so failed
    calls can still be explained.
    """

    def __init__(self, adapter: Adapter | str, *, name: str | None = None) -> None:
        if isinstance(adapter, str):
            name = name or adapter
            adapter = get_adapter(adapter)
        elif not callable(getattr(adapter, "fetch", None)):
            raise ConfigurationError(f"{type(adapter).__name__} is not an adapter: it has no fetch(request)")
        self.adapter = adapter
        self.name = name or DEFAULT_SOURCE

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    def request(self, query: Mapping[str, Any]) -> RemoteRequest:
        """The request ``query`` names, checked to be addressed to this source."""
        return addressed_request(query, self.name)

    @DataSource.dispatch
    def get(self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        """Fetch the raw response for ``query`` (a safe method: GET or HEAD)."""

    @DataSource.dispatch
    def get_many(self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        """A remote request answers one value; many-item queries are not found here."""

    @get.register(RawResponse)
    def _get_raw(self, query: Mapping[str, Any], context: PipelineContext | None = None) -> RawResponse:
        request, pipeline = safe_request(self, query, context)
        return checked(self.adapter.fetch(request), pipeline)

    @get_many.register(RawResponse)
    def _get_many_raw(self, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        raise NotFoundError(f"{self!r} answers one request per query, not many: {query!r}")

    def send(self, query: Mapping[str, Any], *, pipeline: Any = None) -> RawResponse:
        """Make a state-changing request (``method`` defaults to POST) and return its response.

        Nothing is cached. With ``pipeline``, every :class:`ResponseRecorder` of it
        (the audit recorder) is handed the response, inside the current session.
        """
        request = self.request(sending(query))
        send = getattr(self.adapter, "send", None)
        if send is None:
            raise ConfigurationError(f"The adapter of {self!r} ({type(self.adapter).__name__}) cannot send")
        return sent(send(request), pipeline)


# -- what every remote source shares, blocking or async -------------------------------


def addressed_request(query: Mapping[str, Any], name: str) -> RemoteRequest:
    """The request ``query`` names; NotFoundError when it is addressed to another source than ``name``."""
    request = request_for(query)
    if request.source != name:
        raise NotFoundError(f"Query is for source {request.source!r}, not {name!r}: {query!r}")
    return request


def safe_request(
    source: Any, query: Mapping[str, Any], context: PipelineContext | None, sender: str = "send"
) -> tuple[RemoteRequest, Any]:
    """What a ``get`` of ``source`` asks: the safe request ``query`` names, and the pipeline
    whose recorders hear of an error answer (None when nothing may be recorded). A state-changing
    request is refused, naming ``source``'s ``sender`` method that makes it."""
    request = source.request(query)
    if not request.safe:
        raise RemoteQueryError(
            f"{source!r}.get only makes safe requests; {request.method} {request.target} changes "
            f"state, so call {sender}(query) instead"
        )
    pipeline = context.get(PipelineContext.Keys.PIPELINE) if context is not None else None
    if context is not None and context.get(PipelineContext.Keys.NO_WRITE_BACK):
        pipeline = None  # CacheMode.NEVER: not even an error answer is recorded
    return request, pipeline


def sending(query: Mapping[str, Any]) -> Mapping[str, Any]:
    """``query`` as a send makes it: POST unless it names its method."""
    return query if "method" in query else {**query, "method": "POST"}


def sent(response: RawResponse, pipeline: Any) -> RawResponse:
    """A send's answer: recorded with ``pipeline``'s recorders whatever its status, then checked."""
    if response.ok:
        _record(response, pipeline)
    return checked(response, pipeline)


def _record(response: RawResponse, pipeline: Any) -> None:
    """Hand ``response`` to every ResponseRecorder of ``pipeline``."""
    if pipeline is None:
        return
    for recorder in pipeline.recorders:
        recorder.record(response)


def checked(response: RawResponse, pipeline: Any) -> RawResponse:
    """``response`` if it is 2xx; else it is recorded for the audit trail and raised (check_status):
    an error answer never reaches a sink."""
    if not response.ok:
        _record(response, pipeline)
    return check_status(response)
