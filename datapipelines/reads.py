"""Reads: the miss path of ``get`` / ``get_result``, ``get_batch`` and ``get_many``.

The rules (tier order, policies, stale-while-revalidate, serve-stale, the negative
cache, single-flight, the process lock, write-back) are written once, as
generators of steps: each yields an I/O request and receives its outcome, or has
the I/O's exception thrown in at the ``yield``. :meth:`Reads.run` is the sync
driver: it performs each step through the element's :class:`~datapipelines.tier.Tier`.
An async driver performs the same steps with the tiers' async twins; nothing
else changes. Steps are tuples whose first item (a :class:`Step`) says what to do;
the outcome sent back is:

- ``(LOOKUP, request, route)``: the cache tier's ``(value, age)``, MISSING, or None
  (skipped or failed: :meth:`Tier.lookup_entry <datapipelines.tier.Tier.lookup_entry>`);
- ``(FETCH, request, route)``: the source's value or MISSING; its error is thrown in;
- ``(WRITE, tier, put, value, context, passed)``: None (a write-back into one feed);
- ``(DELIVER, trace, route, value, context, passed)``: the value written back and
  converted, all under a tracing bridge's span (only when one is installed);
- ``(LOOKUP_MANY, route, queries, limit)``, ``(FETCH_MANY, route, queries)``,
  ``(WRITE_MANY, tier, type, pairs, seconds, passed)``: the batch twins;
- ``(FLIGHT, key, steps)``: ``(result, joined)``; only the first caller per key runs
  ``steps()``'s steps, the others share its outcome;
- ``(ACQUIRE, lock, name)``: the process lock's token, or None while another holds it;
  ``(WAIT, lock, name, probe)``: what ``probe()``'s steps found once the holder is done,
  or MISSING; ``(RELEASE, lock, name, token)``: None.

In-process work (the memory tier's re-check, the negative cache, conversions)
runs inline: it never blocks. A driver runs steps to their end, never closing them
early: the process lock is released by a step in a ``finally``.
"""

from __future__ import annotations

import contextvars
import enum
import functools
import logging
import threading
from collections.abc import Callable, Container, Generator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

from cachetools import LRUCache

from .context import PipelineContext
from .errors import NotFoundError, type_name
from .flight import SingleFlight
from .forks import reset_in_children
from .keys import key_for
from .plan import Plans, Route, convert
from .policy import Policy
from .store import MISSING

if TYPE_CHECKING:
    from .redis.lock import RedisLock  # for the annotation only: RedisLock loads redis-py

LOGGER = logging.getLogger(__name__)

_QUERY = PipelineContext.Keys.QUERY
_MANY = PipelineContext.Keys.MANY
_EXPIRY = PipelineContext.Keys.EXPIRY
_SOURCE = PipelineContext.Keys.SOURCE
_WRITE_BACK_OFF = PipelineContext.Keys.NO_WRITE_BACK


class Step(enum.Enum):
    """What a step asks the driver to do (see the module docstring)."""

    LOOKUP = "lookup"
    FETCH = "fetch"
    DELIVER = "deliver"
    WRITE = "write"
    WRITE_MANY = "write many"
    LOOKUP_MANY = "lookup many"
    FETCH_MANY = "fetch many"
    FLIGHT = "flight"
    ACQUIRE = "acquire"
    WAIT = "wait"
    RELEASE = "release"


# Module names for the members: the driver compares with ``is`` and no enum lookup.
LOOKUP, FETCH, DELIVER, WRITE, WRITE_MANY = Step.LOOKUP, Step.FETCH, Step.DELIVER, Step.WRITE, Step.WRITE_MANY
LOOKUP_MANY, FETCH_MANY, FLIGHT = Step.LOOKUP_MANY, Step.FETCH_MANY, Step.FLIGHT
ACQUIRE, WAIT, RELEASE = Step.ACQUIRE, Step.WAIT, Step.RELEASE

#: A miss path: yields steps, receives their outcomes, returns its answer.
Steps = Generator[tuple[Any, ...], Any, Any]


class Result(NamedTuple):
    """What ``get_result`` returns: the value, whether it is stale, and who answered."""

    value: Any
    stale: bool
    source: str


class Request:
    """One ``get`` on its way through the routes (the miss path's shared state)."""

    __slots__ = (
        "type", "query", "routes", "context", "policy", "refresh", "stale", "clean_misses", "write_back",
        "trace", "passed",
    )  # fmt: skip

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
        # Tiers (by element id) that failed or were skipped in this call: neither asked again
        # nor written back, so a dead tier costs one timeout per call, not one per step.
        self.passed: set[int] = set()


def deliver_steps(
    route: Route, value: Any, context: Any, passed: Container[int] = (), trace: Any = None
) -> Steps:
    """Write ``value`` back into ``route``'s feeds (except the tiers in ``passed``); return it converted.

    Under a tracing bridge (``trace``) all of it is one DELIVER step, which the bridge spans.
    """
    if trace is not None:
        return (yield (DELIVER, trace, route, value, context, passed))
    context[_SOURCE] = route.source_name
    for feed in route.before:
        yield (WRITE, feed.tier, feed.put, value, context, passed)
    value = convert(route.chain, value, context)
    for feed in route.after:
        yield (WRITE, feed.tier, feed.put, value, context, passed)
    return value


class NegativeCache:
    """Remembered NotFoundErrors: (type, key) -> until when; bounded, least recent out first."""

    def __init__(self, size: int) -> None:
        self._entries: LRUCache[tuple[Any, str], float] = LRUCache(size)
        self._lock = threading.Lock()
        reset_in_children(self)

    def _after_fork(self) -> None:
        if self._lock.locked():
            self._entries = LRUCache(self._entries.maxsize)  # perhaps half-changed
        self._lock = threading.Lock()

    def until(self, key: tuple[Any, str]) -> float | None:
        with self._lock:
            return self._entries.get(key)

    def remember(self, key: tuple[Any, str], until: float) -> None:
        with self._lock:
            self._entries[key] = until

    def forget(self, key: tuple[Any, str]) -> None:
        with self._lock:
            self._entries.pop(key, None)


class Refresher:
    """Runs ``refresh(type, query)`` in the background, once per key however often it is asked."""

    def __init__(self, refresh: Callable[[Any, Mapping[str, Any]], Any]) -> None:
        self._refresh = refresh
        self._lock = threading.Lock()
        self._pending: set[tuple[Any, str]] = set()
        self._pool: ThreadPoolExecutor | None = None
        reset_in_children(self)

    def _after_fork(self) -> None:
        # The parent's pool threads do not exist here; a new pool starts on the next refresh.
        self._lock = threading.Lock()
        self._pool = None
        self._pending = set()

    def later(self, type: Any, query: Mapping[str, Any]) -> None:
        try:
            key = (type, key_for(type, query))
        except TypeError:
            return
        with self._lock:
            if key in self._pending:
                return
            self._pending.add(key)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(2, thread_name_prefix="datapipelines-refresh")
        # In the caller's context, so what it set (a session and its partitions, a cached call's
        # arguments) holds there too.
        self._pool.submit(contextvars.copy_context().run, self._run, key, type, dict(query))

    def _run(self, key: tuple[Any, str], type: Any, query: Mapping[str, Any]) -> None:
        try:
            self._refresh(type, query)
        except Exception as error:
            LOGGER.warning("Background refresh of %s %r failed: %r", type_name(type), query, error)
        finally:
            with self._lock:
                self._pending.discard(key)


class Reads:
    """The read half of a pipeline: its miss path (as steps) and the sync driver that runs them.

    ``pipeline`` is the facade (contexts carry it; a tracing bridge names it);
    ``tracer`` is set by :mod:`datapipelines.otel` and read on the miss path only.
    """

    def __init__(
        self,
        pipeline: Any,
        plans: Plans,
        policies: Mapping[Any, Policy],
        *,
        new_context: Callable[[Any], PipelineContext],
        clock: Callable[[], float],
        process_lock: RedisLock | None,
        negative: NegativeCache,
    ) -> None:
        self.pipeline = pipeline
        self.plans = plans
        self.policies = policies
        self.new_context = new_context
        self.clock = clock
        self.process_lock = process_lock
        self.negative = negative
        self.flight = SingleFlight()
        self.refresher = Refresher(lambda type, query: self.resolve(type, query, True, False, 0))
        self.tracer: Any = None

    # -- get / get_result ---------------------------------------------------------------
    def resolve(
        self,
        type: Any,
        query: Mapping[str, Any],
        refresh: bool,
        only_cached: bool,
        start: int,
        write_back: bool = True,
    ) -> Result:
        """Ask the routes from ``start`` on: cache tiers first-come, then the sources.

        The hit path hands over with ``start=1`` only after a clean miss in the first tier.
        """
        request = Request(
            type, query, self.plans.routes(type), self.new_context(query), self.policies.get(type), refresh,
            write_back,
        )  # fmt: skip
        request.clean_misses = request.routes[:start]
        if self.tracer is not None:
            # Spans for this get, opened only once it is known to be a miss.
            return self.tracer.resolve(self.pipeline, request, start, only_cached, self._walk)  # type: ignore[no-any-return]
        return self.run(self.walk(request, start, only_cached))  # type: ignore[no-any-return]

    def _walk(self, request: Request, start: int, only_cached: bool) -> Result:
        return self.run(self.walk(request, start, only_cached))  # type: ignore[no-any-return]

    def walk(self, request: Request, start: int, only_cached: bool) -> Steps:
        """The cache tiers in order, then the sources: the value with its staleness and origin."""
        type, query, refresh, policy = request.type, request.query, request.refresh, request.policy
        routes = request.routes
        for index in range(start, len(routes)):
            route = routes[index]
            if (refresh and route.cached) or (only_cached and not route.cached):
                continue
            if not route.cached:
                # The sources from here on, once per key however many callers wait.
                if not request.write_back:
                    # Its own call: a caller joining it would miss the write-back it expects.
                    return (yield from self._ask_sources(request, index, None))
                try:
                    key = key_for(type, query)
                except TypeError:
                    # A query the key function cannot encode (1.x allows any object): no coalescing.
                    return (yield from self._call_sources(request, index, None))
                lead = functools.partial(self._call_sources, request, index, key)
                result, joined = yield (FLIGHT, (type, key), lead)
                if joined:
                    route.stats.joins += 1
                return result
            if id(route.source) in request.passed:
                continue
            found = yield (LOOKUP, request, route)
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
                    self.refresher.later(type, query)
            if route.plain:
                return Result(value, False, route.source_name)  # nothing to convert or write back
            steps = deliver_steps(route, value, request.context, request.passed, request.trace)
            return Result((yield from steps), False, route.source_name)
        if request.stale is not None:
            return request.stale
        selected = [r for r in routes if not (refresh and r.cached) and not (only_cached and not r.cached)]
        raise NotFoundError(type=type, query=query, tried=[r.name for r in selected])

    def _call_sources(self, request: Request, index: int, key: str | None) -> Steps:
        """The steps of the one caller per key that asks the sources (a plain function, so the
        common case costs no generator of its own)."""
        # A caller that missed just before another flight wrote back must not call again.
        found = self._recheck_local(request)
        if found is not None:
            return self._answer(request, *found)
        policy = request.policy
        if policy is not None and policy.negative_ttl and key is not None:
            until = self.negative.until((request.type, key))
            if until is not None and until > self.clock():
                request.routes[index].stats.negative += 1
                raise NotFoundError(type=request.type, query=request.query, tried=["negative cache"])
        lock = self.process_lock
        if lock is None or key is None:
            return self._ask_sources(request, index, key)
        return self._locked(request, index, key, lock)

    def _locked(self, request: Request, index: int, key: str, lock: RedisLock) -> Steps:
        """Ask the sources under the process lock, unless another process's value arrives."""
        name = f"{type_name(request.type)}:{key}"
        token = yield (ACQUIRE, lock, name)
        if token is None:
            # Another process is fetching it: wait for its value to reach a shared tier.
            waited = yield (WAIT, lock, name, lambda: self._cached(request))
            if waited is not MISSING:
                return waited
            return (yield from self._ask_sources(request, index, key))
        try:
            cached = yield from self._cached(request)
            if cached is not MISSING:
                return cached
            return (yield from self._ask_sources(request, index, key))
        finally:
            yield (RELEASE, lock, name, token)

    @staticmethod
    def _answer(request: Request, route: Route, value: Any) -> Steps:
        steps = deliver_steps(route, value, request.context, request.passed, request.trace)
        return Result((yield from steps), False, route.source_name)

    def _recheck_local(self, request: Request) -> tuple[Route, Any] | None:
        """(route, value) of a fresh value in an in-process tier that missed earlier, if one arrived."""
        if request.refresh:
            return None
        policy = request.policy
        for route in request.clean_misses:
            if not route.tier.in_process:
                continue
            entry = route.source.lookup_entry(route.source_type, request.query)  # type: ignore[attr-defined]
            if entry is MISSING:
                continue
            value, age = entry
            if policy is None or age is None or age < policy.fresh_limit:
                return route, value
        return None

    def _cached(self, request: Request) -> Steps:
        """The value from the cache tiers, sparing those that already failed this call; or MISSING."""
        again = Request(request.type, request.query, request.routes, self.new_context(request.query),
                        request.policy, False)  # fmt: skip
        again.passed, again.trace = request.passed, request.trace
        try:
            return (yield from self.walk(again, 0, True))
        except NotFoundError:
            return MISSING

    def _ask_sources(self, request: Request, index: int, key: str | None) -> Steps:
        type, routes, context, policy = request.type, request.routes, request.context, request.policy
        tried = [] if request.refresh else [r.name for r in routes[:index] if r.cached]
        for route in routes[index:]:
            if route.cached:
                continue
            tried.append(route.name)
            try:
                value = yield (FETCH, request, route)
            except Exception as error:
                if request.stale is not None:
                    route.stats.stale += 1
                    LOGGER.warning(
                        "%s failed (%r); serving a stale %s", route.stats.name, error, type_name(type)
                    )
                    return request.stale
                raise
            if value is MISSING:
                continue
            if not request.write_back:
                return Result(convert(route.chain, value, context), False, route.source_name)
            if policy is not None and policy.ttl is not None:
                context[_EXPIRY] = {type: policy.lifetime()}
            steps = deliver_steps(route, value, request.context, request.passed, request.trace)
            return Result((yield from steps), False, route.source_name)
        if policy is not None and policy.negative_ttl and key is not None:
            self.negative.remember((type, key), self.clock() + policy.negative_ttl)
        raise NotFoundError(type=type, query=request.query, tried=tried)

    # -- get_batch --------------------------------------------------------------------------
    def get_batch(self, type: Any, queries: Sequence[Mapping[str, Any]], default: Any) -> list[Any]:
        return self.run(self.batch(type, list(queries), default))  # type: ignore[no-any-return]

    def batch(self, type: Any, queries: list[Mapping[str, Any]], default: Any) -> Steps:
        """Values aligned with ``queries``; each tier is asked only for what earlier tiers missed."""
        routes = self.plans.routes(type)
        policy = self.policies.get(type)
        expiry = {type: policy.lifetime()} if policy is not None and policy.ttl is not None else {}
        # A batch serves fresh values only: past its ttl a value is fetched again.
        limit = policy.fresh_limit if policy is not None else float("inf")
        results: list[Any] = [MISSING] * len(queries)
        pending = list(range(len(queries)))
        tried = []
        # Tiers that failed or were skipped in this batch are not written back either.
        passed: set[int] = set()
        for route in routes:
            if not pending:
                break
            tried.append(route.name)
            asked = [queries[i] for i in pending]
            if not route.cached:
                found = yield (FETCH_MANY, route, asked)
            elif id(route.source) in passed:
                continue
            else:
                found = yield (LOOKUP_MANY, route, asked, limit)
                if found is None:
                    passed.add(id(route.source))
                    continue
            if route.plain:
                # Nothing to convert or write back: the values are the results.
                missed = []
                for index, value in zip(pending, found, strict=True):
                    if value is MISSING:
                        missed.append(index)
                    else:
                        results[index] = value
                pending = missed
                continue
            hits = [(i, value) for i, value in zip(pending, found, strict=True) if value is not MISSING]
            if not hits:
                continue
            yield from self._write_back_batch(route, route.before, [(queries[i], v) for i, v in hits],
                                              expiry, passed)  # fmt: skip
            converted = [(i, convert(route.chain, v, self.new_context(queries[i]))) for i, v in hits]
            yield from self._write_back_batch(route, route.after, [(queries[i], v) for i, v in converted],
                                              expiry, passed)  # fmt: skip
            for index, value in converted:
                results[index] = value
            pending = [index for index in pending if results[index] is MISSING]
        if pending:
            if default is MISSING:
                missing = [queries[i] for i in pending]
                raise NotFoundError(
                    f"No {type_name(type)} found for {len(missing)} of {len(queries)} queries: {missing!r} "
                    f"(tried: {', '.join(tried)})",
                    type=type,
                    query=missing,
                    tried=tried,
                )
            for index in pending:
                results[index] = default
        return results

    def _write_back_batch(
        self,
        route: Route,
        feeds: Sequence[Any],
        pairs: list[tuple[Mapping[str, Any], Any]],
        expiry: Mapping[Any, float | None],
        passed: set[int],
    ) -> Steps:
        """Write what ``route`` answered back: one bulk put per store, per item elsewhere."""

        def context_for(query: Mapping[str, Any]) -> PipelineContext:
            context = self.new_context(query)
            context[_SOURCE] = route.source_name
            if expiry:
                context[_EXPIRY] = expiry
            return context

        for feed in feeds:
            if feed.keyed:
                converted = [(q, convert(feed.chain, v, context_for(q))) for q, v in pairs]
                seconds = expiry.get(feed.store_type, MISSING)
                yield (WRITE_MANY, feed.tier, feed.store_type, converted, seconds, passed)
            else:
                for query, value in pairs:
                    yield (WRITE, feed.tier, feed.put, value, context_for(query), passed)

    # -- get_many (1.x) ---------------------------------------------------------------------
    def get_many(self, type: Any, query: Mapping[str, Any], streaming: bool) -> Iterable[Any]:
        routes = self.plans.routes(type)
        context = self.new_context(query)
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
                feed.tier.write(feed.put_many, items, context)
            items = [convert(route.chain, item, context) for item in items]
            for feed in route.after:
                feed.tier.write(feed.put_many, items, context)
            return items
        raise NotFoundError(type=type, query=query, tried=[r.name for r in routes])

    def _stream(self, route: Route, result: Iterable[Any], context: PipelineContext) -> Iterator[Any]:
        for item in result:
            yield self.run(deliver_steps(route, item, context))

    # -- the sync driver ----------------------------------------------------------------------
    def run(self, steps: Steps) -> Any:
        """Perform each step of ``steps`` with the tiers' sync methods; return its answer."""
        send, throw = steps.send, steps.throw
        outcome: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = send(outcome) if error is None else throw(error)
            except StopIteration as done:
                return done.value
            error = None
            kind = step[0]
            # Dispatched inline, most frequent first: a step costs no call of its own.
            try:
                if kind is WRITE:
                    _, tier, put, value, context, passed = step
                    outcome = tier.write(put, value, context, passed)
                elif kind is FETCH:
                    _, request, route = step
                    get = None if request.trace is None else request.trace.fetch(route)
                    outcome = route.tier.fetch(route.source_type, request.query, request.context, get)
                elif kind is LOOKUP:
                    _, request, route = step
                    if request.trace is None:
                        outcome = route.tier.lookup_entry(route.source_type, request.query)
                    else:
                        outcome = request.trace.lookup(self._lookup)(route, request.type, request.query)
                elif kind is FLIGHT:
                    outcome = self.flight.run(step[1], functools.partial(self._lead, step[2]))
                else:
                    outcome = self._perform(step)
            except BaseException as raised:  # handed to the rules at their ``yield``
                error, outcome = raised, None

    def _perform(self, step: tuple[Any, ...]) -> Any:
        """The steps of batches, tracing and the process lock."""
        kind = step[0]
        if kind is DELIVER:
            _, trace, route, value, context, passed = step
            return trace.write_back(self._deliver)(route, value, context, passed)
        if kind is LOOKUP_MANY:
            _, route, queries, limit = step
            return route.tier.lookup_many(route.source_type, queries, limit)
        if kind is FETCH_MANY:
            _, route, queries = step
            return route.tier.fetch_many(route.source_type, queries)
        if kind is WRITE_MANY:
            _, tier, store_type, pairs, seconds, passed = step
            return tier.write_many(store_type, pairs, seconds, passed)
        if kind is ACQUIRE:
            return step[1].acquire(step[2])
        if kind is WAIT:
            _, lock, name, steps = step
            return lock.wait(name, lambda: self.run(steps()), MISSING)
        if kind is RELEASE:
            _, lock, name, token = step
            return lock.release(name, token)
        raise AssertionError(f"unknown step {kind!r}")

    def _lead(self, steps: Callable[[], Steps]) -> Any:
        """Run the steps ``steps()`` makes: the single-flight leader's work."""
        return self.run(steps())

    def _lookup(self, route: Route, type: Any, query: Mapping[str, Any]) -> Any:
        return route.tier.lookup_entry(route.source_type, query)

    def _deliver(self, route: Route, value: Any, context: Any, passed: Container[int] = ()) -> Any:
        return self.run(deliver_steps(route, value, context, passed))
