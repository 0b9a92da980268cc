"""DataPipeline: ask an ordered chain of stores and sources for a typed value."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from cachetools import LRUCache

from .batch import BatchReads
from .breaker import GUARD_FAILED, NO_BREAKER, CircuitBreaker, NoBreaker
from .cache_mode import mode_flags
from .context import PipelineContext
from .data_sink import DataSink
from .data_source import DataSource
from .data_transformer import DataTransformer
from .errors import (
    CALLER_ERRORS,
    ConfigurationError,
    DamagedEntryError,
    NoConversionError,
    NotFoundError,
    element_name,
    type_name,
)
from .flight import SingleFlight
from .forks import reset_in_children
from .keys import key_for
from .plan import Feed, Route, TypeGraph, convert, describe_provided, feeds_for, plan_routes
from .policy import Policy
from .remote import ResponseRecorder, partition
from .stats import SAMPLE_EVERY, ElementStats
from .store import MISSING, Store

if TYPE_CHECKING:
    from .redis.lock import RedisLock  # for the annotation only: RedisLock loads redis-py

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")


_PIPELINE = PipelineContext.Keys.PIPELINE
_QUERY = PipelineContext.Keys.QUERY
_QUERIES = PipelineContext.Keys.QUERIES
_MANY = PipelineContext.Keys.MANY
_EXPIRY = PipelineContext.Keys.EXPIRY
_SOURCE = PipelineContext.Keys.SOURCE
_WRITE_BACK_OFF = PipelineContext.Keys.NO_WRITE_BACK
_SAMPLE_MASK = SAMPLE_EVERY - 1
_LOOKUP = "lookup"
_WRITE_BACK = "write-back"
_INVALIDATE = "invalidate"
# Failed writes are counted apart from failed lookups, so hits stay exact.
_WRITES = (_WRITE_BACK, _INVALIDATE)

_current_session: contextvars.ContextVar[Any] = contextvars.ContextVar("datapipelines_session", default=None)


def is_tier(element: Any) -> bool:
    """Whether ``stats()`` counts an element among the tiers: it is both a source and a sink."""
    return isinstance(element, DataSource) and isinstance(element, DataSink)


def current_session() -> Any:
    """The id of the session opened by ``pipeline.session(...)`` in this context, or None."""
    return _current_session.get()


class Result(NamedTuple):
    """What ``get_result`` returns: the value, whether it is stale, and who answered."""

    value: Any
    stale: bool
    source: str


class _Request:
    """One ``get`` on its way through the routes (the miss path's shared state)."""

    __slots__ = (
        "type", "query", "routes", "context", "policy", "refresh", "stale", "clean_misses", "write_back",
        "trace", "passed",
    )

    def __init__(
        self,
        type: Any,
        query: Mapping[str, Any],
        routes: list[Route],
        context: PipelineContext,
        policy: Policy | None,
        refresh: bool,
        write_back: bool = True,
    ) -> None:
        self.type, self.query, self.routes, self.context = type, query, routes, context
        self.policy, self.refresh = policy, refresh
        # False under CacheMode.NEVER: the value goes to the caller only.
        self.write_back = write_back
        if not write_back:
            context[_WRITE_BACK_OFF] = True
        # A value past its ttl but within max_stale, served if the sources fail.
        self.stale: Result | None = None
        # Tiers that answered "not here" (not skipped, not failed): safe to ask again.
        self.clean_misses: list[Route] = []
        # The spans of this request, when a tracing bridge is installed (datapipelines.otel).
        self.trace: Any = None
        # Tiers (by id) that failed or were skipped in this call: neither asked again nor
        # written back, so a dead tier costs one timeout per call, not one per step.
        self.passed: set[int] = set()


class DataPipeline(BatchReads):
    """An ordered list of sources and sinks, plus transformers between types.

    ``elements`` are asked fastest first; a value found in one element is written
    back into every sink placed before it. Keyword options:

    - ``query_from``: type -> function deriving the query of an item, so a direct
      ``put`` or a ``get_many`` write-back can key it in the built-in stores.
    - ``policies``: type -> :class:`Policy` (stale-while-revalidate, fail-safe,
      negative caching, jitter).
    - ``strict``: let a cache tier's exceptions reach the caller (default: a
      failing tier is logged, counted and skipped).
    - ``breaker``: factory of the :class:`CircuitBreaker` each cache tier gets;
      None disables breakers.
    - ``process_lock``: a :class:`RedisLock` so processes sharing a Redis call a
      source once per missing key.
    - ``negative_cache_size``: how many NotFoundErrors a ``negative_ttl`` policy
      remembers at most.
    - ``invalidation``: an object with ``attach(pipeline)`` and ``publish(keys)``
      (see :mod:`datapipelines.invalidation`) that tells other processes' memory
      tiers about invalidations and puts.
    - ``name``: how metrics and spans name this pipeline.
    - ``stats_by_type``: also count per requested type (:meth:`stats_by_type`, and a
      ``type`` attribute on every metric); off by default, as each type adds series.

    A pipeline is safe to share between threads.
    """

    def __init__(
        self,
        elements: Sequence[DataSource | DataSink],
        transformers: Iterable[DataTransformer] | None = None,
        *,
        query_from: Mapping[Any, Callable[[Any], Mapping[str, Any]]] | None = None,
        policies: Mapping[Any, Policy] | None = None,
        strict: bool = False,
        breaker: Callable[[], CircuitBreaker] | None = CircuitBreaker,
        process_lock: RedisLock | None = None,
        invalidation: Any = None,
        negative_cache_size: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        name: str = "default",
        stats_by_type: bool = False,
    ) -> None:
        if not elements:
            raise ConfigurationError("A DataPipeline needs a non-empty sequence of DataSources and DataSinks")
        for element in elements:
            if not isinstance(element, (DataSource, DataSink)):
                raise ConfigurationError(
                    f"Pipeline elements must be DataSources or DataSinks; got {type(element).__name__}"
                )
        self.name = name
        self._elements = list(elements)
        self._transformers = list(transformers or ())
        self._graph = TypeGraph(self._transformers)
        ordered: list[tuple[DataSource, list[DataSink]]] = []
        sinks_so_far: list[DataSink] = []
        for element in self._elements:
            if isinstance(element, DataSource):
                ordered.append((element, list(sinks_so_far)))
            if isinstance(element, DataSink):
                sinks_so_far.append(element)
        self._ordered_sources = ordered
        # 1.x layout, which Cassiopeia reads: (source, set of sinks before it), set of sinks.
        self._sources = [(source, set(sinks)) for source, sinks in ordered]
        self._sinks = set(sinks_so_far)
        self._ordered_sinks = sinks_so_far
        self._query_from = dict(query_from or {})
        self._strict = strict
        self._clock = clock
        self._stats = {id(e): ElementStats(element_name(e)) for e in self._elements}
        # (element id, requested type) -> its counters, when counting by type.
        self._type_stats: dict[tuple[int, Any], ElementStats] | None = {} if stats_by_type else None
        self._breakers: dict[int, CircuitBreaker | NoBreaker] = {
            id(e): breaker() if breaker is not None else NO_BREAKER
            for e in self._elements
            if isinstance(e, DataSink)
        }
        self._routes: dict[Any, list[Route]] = {}
        self._put_feeds: dict[Any, list[Feed]] = {}
        self._stores_by_type: dict[Any, frozenset[tuple[Store, Any]]] = {}
        # Per type, the fastest tier's route when a hit there needs no conversion.
        self._fast: dict[Any, Route] = {}
        self._flight = SingleFlight()
        self._process_lock = process_lock
        # Remembered NotFoundErrors: (type, key) -> until when; bounded, least recent out first.
        self._negative: LRUCache[tuple[Any, str], float] = LRUCache(negative_cache_size)
        self._negative_lock = threading.Lock()
        self._refreshing: set[tuple[Any, str]] = set()
        self._refresh_lock = threading.Lock()
        self._refresher: ThreadPoolExecutor | None = None
        self._invalidation = invalidation
        if invalidation is not None:
            invalidation.attach(self)
        self._reports: dict[str, Callable[[], Any]] = {}
        self._policies: dict[Any, Policy] = {}
        for policy_type, policy in (policies or {}).items():
            self.set_policy(policy_type, policy)
        # Set by datapipelines.otel; read on the miss path only, never on a hit.
        self._tracer: Any = None
        reset_in_children(self)

    @classmethod
    def from_config(cls, config: Any, **options: Any) -> DataPipeline:
        """A pipeline from a TOML file (a path) or a dict: see :mod:`datapipelines.config`."""
        from .config import pipeline_from_config

        return pipeline_from_config(config, cls, **options)

    def cached(self, type: Any, *, query: Callable[..., Mapping[str, Any]] | None = None) -> Any:
        """Decorator: the function's results of ``type`` go through this pipeline's tiers.

        See :func:`datapipelines.functions.cached`.
        """
        from .functions import cached

        return cached(self, type, query)

    def _append_source(self, source: DataSource) -> None:
        """Put ``source`` after every element (every sink is then before it) and plan again."""
        self._elements.append(source)
        self._ordered_sources.append((source, list(self._ordered_sinks)))
        self._sources.append((source, set(self._ordered_sinks)))
        self._stats[id(source)] = ElementStats(element_name(source))
        self._routes.clear()
        self._fast.clear()
        self._stores_by_type.clear()

    def _after_fork(self) -> None:
        """In a forked child: refresh threads and the locks of the parent's threads start over."""
        if self._negative_lock.locked():
            self._negative = LRUCache(self._negative.maxsize)  # perhaps half-changed
        self._negative_lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        # The parent's pool threads do not exist here; a new pool starts on the next refresh.
        self._refresher = None
        self._refreshing = set()

    def set_policy(self, type: Any, policy: Policy | None) -> None:
        """Give ``type`` a :class:`Policy` (None removes it)."""
        if policy is not None and not isinstance(policy, Policy):
            raise ConfigurationError(f"The policy for {type_name(type)} must be a Policy, got {policy!r}")
        if policy is None:
            self._policies.pop(type, None)
        else:
            self._policies[type] = policy
        self._routes.pop(type, None)
        self._fast.pop(type, None)

    # -- planning ---------------------------------------------------------------
    @property
    def elements(self) -> list[DataSource | DataSink]:
        return list(self._elements)

    def routes(self, type: Any) -> list[Route]:
        """The plan for ``type``: built on first use, then reused."""
        routes = self._routes.get(type)
        if routes is None:
            routes = plan_routes(self._graph, self._ordered_sources, type)
            if not routes:
                raise NoConversionError(
                    f"No source can provide {type_name(type)}, not even through transformers; "
                    f"the sources provide: {describe_provided(self._ordered_sources)}"
                )
            policy = self._policies.get(type)
            for route in routes:
                route.attach(self._stats_for(route.source, type), self._breaker(route.source), policy)
                for feed in route.before + route.after:
                    feed.attach(self._stats_for(feed.sink, type), self._breaker(feed.sink))
            self._routes[type] = routes
            self._enable_fast_path(type)
        return routes

    def _enable_fast_path(self, type: Any) -> None:
        first = self._routes[type][0]
        # A tier that only tells its ages through lookup_entry (a recorder) takes the slow path.
        if first.cached and first.plain and first.source_type is type and first.keyed == first.aged:
            self._fast[type] = first

    def _feeds_for_put(self, type: Any) -> list[Feed]:
        feeds = self._put_feeds.get(type)
        if feeds is None:
            _, feeds = feeds_for(self._graph, self._ordered_sinks, type, type)
            for feed in feeds:
                feed.attach(self._stats_for(feed.sink, type), self._breaker(feed.sink))
            self._put_feeds[type] = feeds
        return feeds

    def query_for(self, type: Any, item: Any) -> Mapping[str, Any] | None:
        """The query that identifies ``item``, from ``query_from``; None if there is no function."""
        function = self._query_from.get(type)
        return None if function is None else function(item)

    def _stats_for(self, element: Any, type: Any) -> ElementStats:
        """The counters a route or feed of ``type`` updates: the element's, or its own per type."""
        if self._type_stats is None:
            return self._stats[id(element)]
        key = (id(element), type)
        stats = self._type_stats.get(key)
        if stats is None:
            stats = self._type_stats[key] = ElementStats(self._stats[id(element)].name)
        return stats

    def _breaker(self, element: Any) -> CircuitBreaker | NoBreaker:
        """The element's breaker; pure sources (not tiers) have none."""
        return self._breakers.get(id(element), NO_BREAKER)

    def _context(self, query: Any) -> PipelineContext:
        # Keyword form is the fastest way to build it; the names are Keys.PIPELINE and Keys.QUERY.
        return PipelineContext(pipeline=self, query=query)

    @staticmethod
    def _select(routes: list[Route], refresh: bool, only_cached: bool) -> list[Route]:
        if refresh:
            routes = [r for r in routes if not r.cached]
        if only_cached:
            routes = [r for r in routes if r.cached]
        return routes

    # -- reading ----------------------------------------------------------------
    def get(
        self,
        type: type[T] | Any,
        query: Mapping[str, Any],
        *,
        refresh: bool = False,
        only_cached: bool = False,
        cache_mode: Any = None,
    ) -> T:
        """The value of ``type`` for ``query``.

        ``refresh=True`` skips every cache tier on the way in (the value is still
        written back); ``only_cached=True`` never calls a source that is not a store.
        ``cache_mode`` names either, or NEVER (see :class:`~datapipelines.cache_mode.CacheMode`).
        """
        route = self._fast.get(type)
        if route is not None and not (refresh or only_cached) and cache_mode is None:
            stats = route.stats
            # Every call while the tier's breaker is open takes the slow path. One lookup
            # in SAMPLE_EVERY is timed here. A lookup is counted once its outcome is
            # known, so no reading sees hits go down.
            if not route.breaker.tripped:
                timed = not stats.lookups & _SAMPLE_MASK
                started = time.perf_counter() if timed else 0.0
                start = 1
                try:
                    if not route.keyed:
                        value = route.source.get(type, dict(query), self._context(query))
                    elif route.max_age is None:
                        value = route.lookup(type, query)
                    else:
                        value = route.lookup_fresh(type, query, route.max_age)
                        if value is MISSING:
                            # Missing or due for refresh: the slow path sorts out which.
                            start = 0
                except NotFoundError as missing:
                    value = MISSING
                    if isinstance(missing, DamagedEntryError):
                        stats.damaged += 1  # as the slow path counts it (a recorder as first tier)
                except Exception:
                    value, start = MISSING, 0  # the slow path asks again and accounts for the error
                if start:
                    if timed:
                        stats.record_latency(time.perf_counter() - started)
                    stats.lookups += 1
                    if value is not MISSING:
                        return value  # type: ignore[no-any-return]
                    stats.misses += 1
                    return self._resolve(type, query, False, False, 1).value  # type: ignore[no-any-return]
        found = self.get_result(type, query, refresh=refresh, only_cached=only_cached, cache_mode=cache_mode)
        return found.value  # type: ignore[no-any-return]

    def get_result(
        self,
        type: Any,
        query: Mapping[str, Any],
        *,
        refresh: bool = False,
        only_cached: bool = False,
        cache_mode: Any = None,
    ) -> Result:
        """Like ``get``, but says whether the value is stale and which element answered."""
        if cache_mode is None:
            return self._resolve(type, query, refresh, only_cached, 0)
        flags = mode_flags(cache_mode, refresh, only_cached)
        return self._resolve(type, query, flags.refresh, flags.only_cached, 0, flags.write_back)

    def _resolve(
        self,
        type: Any,
        query: Mapping[str, Any],
        refresh: bool,
        only_cached: bool,
        start: int,
        write_back: bool = True,
        passed: set[int] | None = None,
    ) -> Result:
        """Ask the routes from ``start`` on: cache tiers first-come, then the sources.

        ``passed`` carries the tiers an enclosing call already found failing.
        """
        policy = self._policies.get(type)
        request = _Request(type, query, self.routes(type), self._context(query), policy, refresh, write_back)
        if passed is not None:
            request.passed = passed
        # The fast path only hands over (start=1) after a clean miss in the first tier.
        request.clean_misses = request.routes[:start]
        if self._tracer is not None:
            # Spans for this get, opened only once it is known to be a miss.
            return self._tracer.resolve(self, request, start, only_cached, self._walk)  # type: ignore[no-any-return]
        return self._walk(request, start, only_cached)

    def _walk(self, request: _Request, start: int, only_cached: bool) -> Result:
        type, query, refresh, policy = request.type, request.query, request.refresh, request.policy
        ask = self._ask_tier if request.trace is None else request.trace.lookup(self._ask_tier)
        for index in range(start, len(request.routes)):
            route = request.routes[index]
            if (refresh and route.cached) or (only_cached and not route.cached):
                continue
            if not route.cached:
                return self._fetch(request, index)
            if id(route.source) in request.passed:
                continue
            found = ask(route, type, query)
            if found is None:
                request.passed.add(id(route.source))
                continue
            if found is MISSING:
                request.clean_misses.append(route)
                continue
            value, age = found
            if policy is not None and age is not None:
                if age >= policy.fresh_limit:
                    if request.stale is None and age < policy.stale_limit:
                        stale_value = convert(route.chain, value, request.context)
                        request.stale = Result(stale_value, True, route.source_name)
                    continue
                if age >= policy.soft_limit:
                    self._refresh_later(type, query)
            return self._answer(route, value, request)
        if request.stale is not None:
            return request.stale
        raise NotFoundError(
            type=type, query=query, tried=[r.name for r in self._select(request.routes, refresh, only_cached)]
        )

    def _ask_tier(self, route: Route, type: Any, query: Mapping[str, Any]) -> Any:
        """(value, age or None) from a cache tier, MISSING if it has none, None if it
        was skipped or failed (a failing tier never fails the call)."""

        def ask() -> Any:
            started = time.perf_counter()
            try:
                if route.aged:
                    found = route.source.lookup_entry(route.source_type, query)  # type: ignore[attr-defined]
                else:
                    found = (route.source.get(route.source_type, dict(query), self._context(query)), None)
            except NotFoundError as missing:
                found = MISSING
                if isinstance(missing, DamagedEntryError):
                    route.stats.damaged += 1
            route.stats.record_latency(time.perf_counter() - started)
            return found

        # A query the tier cannot key (CALLER_ERRORS) is raised before the lookup is counted.
        found = self._guarded(route.source, route.stats, route.breaker, _LOOKUP, ask)
        if found is GUARD_FAILED:
            return None
        stats, missed = route.stats, found is MISSING
        stats.lookups += 1
        stats.misses += missed
        return found

    def _guarded(
        self,
        element: Any,
        stats: ElementStats,
        breaker: CircuitBreaker | NoBreaker,
        action: str,
        call: Callable[[], Any],
        count: int = 1,
    ) -> Any:
        """``call()`` on a tier under its breaker: its result, or GUARD_FAILED when the
        breaker skipped it or it failed (counted, logged; raised only when strict).

        ``hits`` is derived (lookups less misses, errors and skips), so a lookup of
        ``count`` queries is counted once its outcome is known, together with that
        outcome in adjacent statements (no thread switch between them): here for a
        skip or an error, by the caller with its misses on success. No reading of
        the stats sees ``hits`` go down.
        """
        lookup = action not in _WRITES
        if not breaker.allow():
            if lookup:
                stats.lookups += count
                stats.lookup_skips += count
            else:
                stats.put_skips += 1
            return GUARD_FAILED
        try:
            result = call()
        except CALLER_ERRORS:
            raise
        except Exception as error:
            self._tier_failed(element, stats, breaker, error, action, count)
            return GUARD_FAILED
        breaker.success()
        return result

    def _tier_failed(
        self,
        element: Any,
        stats: ElementStats,
        breaker: CircuitBreaker | NoBreaker,
        error: Exception,
        action: str,
        count: int = 1,
    ) -> None:
        if action in _WRITES:
            stats.put_errors += 1
        else:
            stats.lookups += count
            stats.lookup_errors += count
        breaker.failure()
        if self._strict:
            raise error
        LOGGER.warning("Cache tier %s failed on %s, skipped: %r", stats.name, action, error)

    def _fetch(self, request: _Request, index: int) -> Result:
        """Ask the sources from ``routes[index]`` on, once per key however many callers wait."""
        if not request.write_back:
            # Its own call: a caller joining it would miss the write-back it expects.
            return self._ask_sources(request, index, None)
        try:
            key = key_for(request.type, request.query)
        except TypeError:
            # A query the key function cannot encode (1.x allows any object): no coalescing.
            return self._call_sources(request, index, None)
        result, joined = self._flight.run(
            (request.type, key), lambda: self._call_sources(request, index, key)
        )
        if joined:
            request.routes[index].stats.joins += 1
        return result  # type: ignore[no-any-return]

    def _call_sources(self, request: _Request, index: int, key: str | None) -> Result:
        # A caller that missed just before another flight wrote back must not call again.
        found = self._recheck_local(request)
        if found is not None:
            return found
        policy = request.policy
        if policy is not None and policy.negative_ttl and key is not None:
            with self._negative_lock:
                until = self._negative.get((request.type, key))
            if until is not None and until > self._clock():
                request.routes[index].stats.negative += 1
                raise NotFoundError(type=request.type, query=request.query, tried=["negative cache"])
        lock = self._process_lock
        if lock is None or key is None:
            return self._ask_sources(request, index, key)
        lock_key = f"{type_name(request.type)}:{key}"
        token = lock.acquire(lock_key)
        if token is None:
            # Another process is fetching it: wait for its value to reach a shared tier.
            waited = lock.wait(lock_key, lambda: self._cached(request), MISSING)
            if waited is not MISSING:
                return waited  # type: ignore[no-any-return]
            return self._ask_sources(request, index, key)
        try:
            cached = self._cached(request)
            if cached is not MISSING:
                return cached  # type: ignore[no-any-return]
            return self._ask_sources(request, index, key)
        finally:
            lock.release(lock_key, token)

    def _recheck_local(self, request: _Request) -> Result | None:
        """A fresh value in an in-process tier that missed earlier, if one arrived meanwhile."""
        if request.refresh:
            return None
        policy = request.policy
        for route in request.clean_misses:
            if not (route.keyed and getattr(route.source, "in_process", False)):
                continue
            entry = route.source.lookup_entry(route.source_type, request.query)  # type: ignore[attr-defined]
            if entry is MISSING:
                continue
            value, age = entry
            if policy is None or age is None or age < policy.fresh_limit:
                return self._answer(route, value, request)
        return None

    def _cached(self, request: _Request) -> Any:
        """The value from the cache tiers, sparing those that already failed this call; or MISSING."""
        try:
            return self._resolve(request.type, request.query, False, True, 0, passed=request.passed)
        except NotFoundError:
            return MISSING

    def _ask_sources(self, request: _Request, index: int, key: str | None) -> Result:
        type, routes, context, policy = request.type, request.routes, request.context, request.policy
        trace = request.trace
        tried = [] if request.refresh else [r.name for r in routes[:index] if r.cached]
        for route in routes[index:]:
            if route.cached:
                continue
            tried.append(route.name)
            stats = route.stats
            stats.calls += 1
            started = time.perf_counter()
            get = route.source.get if trace is None else trace.fetch(route)
            try:
                value = get(route.source_type, dict(request.query), context)
            except NotFoundError:
                stats.misses += 1
                continue
            except Exception as error:
                stats.lookup_errors += 1
                if request.stale is not None:
                    stats.stale += 1
                    LOGGER.warning("%s failed (%r); serving a stale %s", stats.name, error, type_name(type))
                    return request.stale
                raise
            finally:
                stats.record_latency(time.perf_counter() - started)
            if not request.write_back:
                return Result(convert(route.chain, value, context), False, route.source_name)
            if policy is not None and policy.ttl is not None:
                context[_EXPIRY] = {type: policy.lifetime()}
            return self._answer(route, value, request)
        if policy is not None and policy.negative_ttl and key is not None:
            with self._negative_lock:
                self._negative[(type, key)] = self._clock() + policy.negative_ttl
        raise NotFoundError(type=type, query=request.query, tried=tried)

    def _answer(self, route: Route, value: Any, request: _Request) -> Result:
        """``route``'s fresh value for ``request``, written back and converted."""
        deliver = self._deliver if request.trace is None else request.trace.write_back(self._deliver)
        return Result(deliver(route, value, request.context, request.passed), False, route.source_name)

    def _deliver(
        self, route: Route, value: Any, context: PipelineContext, passed: Container[int] = ()
    ) -> Any:
        """Write ``value`` back (except into the tiers in ``passed``), convert it, and return it."""
        context[_SOURCE] = route.source_name
        for feed in route.before:
            self._write(feed, feed.put, value, context, passed)
        value = convert(route.chain, value, context)
        for feed in route.after:
            self._write(feed, feed.put, value, context, passed)
        return value

    def _write(
        self,
        feed: Feed,
        put: Callable[[Any, Any], None],
        value: Any,
        context: Any,
        passed: Container[int] = (),
    ) -> None:
        """``put(value, context)`` into the feed's sink under its breaker, unless it is in ``passed``."""
        if id(feed.sink) in passed:
            feed.stats.put_skips += 1
            return
        done = self._guarded(feed.sink, feed.stats, feed.breaker, _WRITE_BACK, lambda: put(value, context))
        if done is not GUARD_FAILED:
            feed.stats.puts += 1

    def _refresh_later(self, type: Any, query: Mapping[str, Any]) -> None:
        """Refresh a value in the background, once per key however often it is hit."""
        try:
            key = (type, key_for(type, query))
        except TypeError:
            return
        with self._refresh_lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)
            if self._refresher is None:
                self._refresher = ThreadPoolExecutor(2, thread_name_prefix="datapipelines-refresh")
        # In the caller's context, so what it set (a session and its partitions, a cached call's
        # arguments) holds there too.
        self._refresher.submit(contextvars.copy_context().run, self._refresh, key, type, dict(query))

    def _refresh(self, key: tuple[Any, str], type: Any, query: Mapping[str, Any]) -> None:
        try:
            self.get_result(type, query, refresh=True)
        except Exception as error:
            LOGGER.warning("Background refresh of %s %r failed: %r", type_name(type), query, error)
        finally:
            with self._refresh_lock:
                self._refreshing.discard(key)

    # -- observability ------------------------------------------------------------
    def stats(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Counters and latency per element, as plain dicts.

        ``{"tiers": {name: {...}}, "sources": {name: {...}}}``: tiers are the
        elements that are both sources and sinks (caches, stores), sources the rest.
        Each entry has hits, misses, puts, errors, skips, calls, joins, stale,
        negative, damaged, p50_us and p99_us (latency in microseconds, None before any sample),
        and tiers the state of their circuit breaker.
        """
        report: dict[str, dict[str, dict[str, Any]]] = {"tiers": {}, "sources": {}}
        per_type = self._type_stats.items() if self._type_stats is not None else ()
        for element in self._elements:
            stats = self._stats[id(element)]
            parts = [s for (owner, _), s in per_type if owner == id(element)]
            entry = (ElementStats.combined([stats, *parts]) if parts else stats).snapshot()
            breaker = self._breakers.get(id(element))
            if breaker is not None:
                entry["breaker"] = breaker.state
            group = "tiers" if is_tier(element) else "sources"
            report[group][self._stats[id(element)].name] = entry
        for section, build in self._reports.items():
            report[section] = build()
        return report

    def stats_by_type(self) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
        """``stats()`` split by requested type: ``{"tiers": {name: {type name: {...}}}, "sources": ...}``.

        Needs ``DataPipeline(..., stats_by_type=True)``; what an element did outside
        any type (a failed invalidation) stays in ``stats()`` only.
        """
        if self._type_stats is None:
            raise ConfigurationError("stats_by_type() needs DataPipeline(..., stats_by_type=True)")
        report: dict[str, dict[str, dict[str, dict[str, Any]]]] = {"tiers": {}, "sources": {}}
        groups = {id(e): "tiers" if is_tier(e) else "sources" for e in self._elements}
        for (owner, type), stats in list(self._type_stats.items()):
            report[groups[owner]].setdefault(stats.name, {})[type_name(type)] = stats.snapshot()
        return report

    def add_stats(self, section: str, report: Callable[[], Any]) -> None:
        """Add ``section`` to :meth:`stats`, filled by calling ``report()`` each time (the ingest uses it)."""
        self._reports[section] = report

    def reset_stats(self) -> None:
        """Set every counter back to zero and forget latency samples."""
        for stats in [*self._stats.values(), *(self._type_stats or {}).values()]:
            stats.reset()

    def get_many(self, type: type[T] | Any, query: Mapping[str, Any], streaming: bool = False) -> Iterable[T]:
        """The values of ``type`` that ``query`` names, from the first source that has them.

        Not streaming: a list, written back in bulk. Streaming: a generator that
        writes each item back as it is consumed.
        """
        routes = self.routes(type)
        context = self._context(query)
        context[_MANY] = True
        for route in routes:
            try:
                result = route.source.get_many(route.source_type, dict(query), context)
            except NotFoundError:
                continue
            if streaming:
                return self._stream(route, result, context)
            items = list(result)
            context[_SOURCE] = route.source_name
            for feed in route.before:
                self._write(feed, feed.put_many, items, context)
            items = [convert(route.chain, item, context) for item in items]
            for feed in route.after:
                self._write(feed, feed.put_many, items, context)
            return items
        raise NotFoundError(type=type, query=query, tried=[r.name for r in routes])

    def _stream(self, route: Route, result: Iterable[Any], context: PipelineContext) -> Iterator[Any]:
        for item in result:
            yield self._deliver(route, item, context)

    # -- writing ------------------------------------------------------------------
    def put(self, type: Any, item: Any, *, query: Mapping[str, Any] | None = None) -> None:
        """Hand ``item`` to every sink that accepts ``type`` (or a conversion of it).

        Built-in stores key it by ``query``, or by the pipeline's ``query_from``
        function for the type. A type no sink accepts stores nothing, as in 1.x.
        """
        feeds = self._feeds_for_put(type)
        if not feeds:
            return
        query = query if query is not None else self.query_for(type, item)
        context = self._context(query)
        for feed in feeds:
            self._write(feed, feed.put, item, context)
        if query is not None:
            self._announce(type, [query])

    def put_many(
        self, type: Any, items: Iterable[Any], *, queries: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """``put`` for several items; ``queries``, if given, key them one by one."""
        feeds = self._feeds_for_put(type)
        if not feeds:
            return
        items = list(items)
        if queries is not None and len(queries) != len(items):
            raise ConfigurationError(f"put_many got {len(items)} items but {len(queries)} queries")
        context = self._context(None)
        context[_QUERIES] = list(queries) if queries is not None else None
        for feed in feeds:
            self._write(feed, feed.put_many, items, context)
        derived = queries if queries is not None else [self.query_for(type, item) for item in items]
        self._announce(type, [q for q in derived if q is not None])

    def _stores_of(self, type: Any) -> frozenset[tuple[Store, Any]]:
        """Every (store, stored type) that may hold a value on the way to ``type``; worked out once."""
        targets = self._stores_by_type.get(type)
        if targets is None:
            found: set[tuple[Store, Any]] = set()
            for element in self._elements:
                if isinstance(element, Store) and type in element.accepts:
                    found.add((element, type))
            with contextlib.suppress(NoConversionError):
                for route in self.routes(type):
                    for feed in route.before + route.after:
                        if feed.keyed:
                            found.add((feed.sink, feed.store_type))  # type: ignore[arg-type]
            targets = self._stores_by_type[type] = frozenset(found)
        return targets

    def invalidate(self, type: Any, query: Mapping[str, Any]) -> int:
        """Remove the value for ``query`` from every store; return how many entries went.

        Besides ``type`` itself, the types a store is fed on the way to ``type``
        (a raw payload kept before conversion, say) are removed too, and so is a
        remembered NotFoundError. With ``invalidation=`` set, other processes'
        memory tiers drop the key as well. A store that fails, or whose breaker is
        open, is skipped with a warning: its entry stays until it expires.
        """
        removed = 0
        for store, store_type in self._stores_of(type):
            deleted = self._guarded(
                store, self._stats[id(store)], self._breaker(store), _INVALIDATE,
                functools.partial(store.delete, store_type, query),
            )  # fmt: skip
            if deleted is GUARD_FAILED:
                LOGGER.warning("%s could not invalidate %s %r", element_name(store), type_name(type), query)
            else:
                removed += deleted
        with contextlib.suppress(TypeError):
            negative = (type, key_for(type, query))
            with self._negative_lock:
                self._negative.pop(negative, None)
        self._announce(type, [query])
        return removed

    def _announce(self, type: Any, queries: Sequence[Mapping[str, Any]]) -> None:
        """Tell other processes' memory tiers to drop these queries' keys."""
        if self._invalidation is None or not queries:
            return
        keys = set()
        for _, store_type in self._stores_of(type):
            for query in queries:
                with contextlib.suppress(TypeError):
                    keys.add(key_for(store_type, query))
        if keys:
            self._invalidation.publish(sorted(keys), pipeline=self)

    def local_stores(self) -> list[Store]:
        """The stores that live in this process (what cross-process invalidation must clear)."""
        return [e for e in self._elements if isinstance(e, Store) and getattr(e, "in_process", False)]

    # -- sessions -------------------------------------------------------------------
    @contextlib.contextmanager
    def session(
        self,
        name: str,
        meta: Mapping[str, Any] | None = None,
        *,
        as_of_bucket: Any = None,
        cache_tag: Any = None,
    ) -> Iterator[Any]:
        """Group the calls made inside the block into one named session; yields its id (a str).

        Every :class:`~datapipelines.remote.ResponseRecorder` element (the audit
        recorder) records it; calls made inside the block see the id through
        :func:`current_session`. ``as_of_bucket`` / ``cache_tag`` partition every
        remote request made inside (see :func:`datapipelines.remote.partition`):
        recorded apart, sent alike.
        """
        recorders = [e for e in self._elements if isinstance(e, ResponseRecorder)]
        session_id = uuid.uuid4().hex
        for recorder in recorders:
            recorder.open_session(session_id, name, dict(meta or {}))
        token = _current_session.set(session_id)
        try:
            with partition(as_of_bucket=as_of_bucket, cache_tag=cache_tag):
                yield session_id
        finally:
            _current_session.reset(token)
            for recorder in recorders:
                recorder.close_session(session_id)
