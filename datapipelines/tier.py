"""Tier: one pipeline element's guarded I/O, built once per element by the pipeline.

Every call the engine makes into an element goes through its Tier, which counts
it, applies the element's circuit breaker, logs a failure and honours ``strict``
in one place. A cache tier's failure never fails the caller (unless strict): the
guarded methods answer None ("unavailable") and the tier is skipped. A source's
error is counted and raised, since whether to serve stale is the read path's call.

The bookkeeping is a few small methods around the raw call (:meth:`Tier.admit`,
:meth:`Tier.failed`, :meth:`Tier.looked_up`, :meth:`Tier.written`), so an async
twin of a guarded method is the same few lines with an ``await`` on the raw call.

Counting rule: ``hits`` is derived (lookups less misses, errors and skips), so a
lookup of ``count`` queries is counted once its outcome is known, together with
that outcome in adjacent statements (no thread switch between them). No reading
of the stats sees ``hits`` go down.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any

from .breaker import CircuitBreaker, NoBreaker
from .context import PipelineContext
from .errors import CALLER_ERRORS, ConfigurationError, DamagedEntryError, NotFoundError, element_name
from .stats import ElementStats
from .store import MISSING

LOGGER = logging.getLogger(__name__)

_MANY = PipelineContext.Keys.MANY

#: Key of the query that ``get_batch`` hands to the ``get_many`` handler of a
#: source with ``batch_get_many = True``: ``{"queries": [q1, q2, ...]}``; the
#: handler returns results aligned with them (None for a query it cannot answer).
BATCH_KEY = "queries"


class Action(enum.Enum):
    """What the engine asked a tier to do (how failures are counted and logged)."""

    LOOKUP = "lookup"
    BATCH_LOOKUP = "batch lookup"
    WRITE_BACK = "write-back"
    INVALIDATE = "invalidate"

    @property
    def writes(self) -> bool:
        """Failed writes are counted apart from failed lookups, so hits stay exact."""
        return self in _WRITES


_WRITES = frozenset({Action.WRITE_BACK, Action.INVALIDATE})


class Tier:
    """The guarded I/O of one pipeline element.

    ``keyed``: a :class:`~datapipelines.store.Store` (looked up by key, in bulk);
    ``cached``: both a source and a sink, so a cache tier (guarded, never fatal);
    ``aged``: it tells the age of what it answers (``lookup_entry``), so a Policy
    applies to it; ``in_process``: it lives in this process's memory;
    ``batch_types``: the types whose ``get_many`` answers a whole batch.
    ``new_context(query)`` builds the context a 1.x ``get`` receives.
    """

    __slots__ = (
        "element", "name", "stats", "breaker", "strict", "new_context", "keyed", "cached", "aged",
        "in_process", "batch_types",
    )  # fmt: skip

    def __init__(
        self,
        element: Any,
        stats: ElementStats,
        breaker: CircuitBreaker | NoBreaker,
        *,
        strict: bool,
        new_context: Callable[[Any], PipelineContext],
        keyed: bool = False,
        cached: bool = False,
        aged: bool = False,
        in_process: bool = False,
        batch_types: Container[Any] = frozenset(),
    ) -> None:
        self.element = element
        self.name = element_name(element)
        self.stats = stats
        self.breaker = breaker
        self.strict = strict
        self.new_context = new_context
        self.keyed, self.cached, self.aged, self.in_process = keyed, cached, aged, in_process
        self.batch_types = batch_types

    def __repr__(self) -> str:
        return f"Tier({self.name})"

    def counted_in(self, stats: ElementStats) -> Tier:
        """This tier with other counters (the element's own for one requested type)."""
        twin = Tier.__new__(Tier)
        for field in Tier.__slots__:
            setattr(twin, field, getattr(self, field))
        twin.stats = stats
        return twin

    # -- bookkeeping, shared by every sync and async method ----------------------------
    def admit(self, action: Action, count: int = 1) -> bool:
        """May the call go ahead? A call the open breaker skips is counted here."""
        if self.breaker.allow():
            return True
        stats = self.stats
        if action.writes:
            stats.put_skips += 1
        else:
            stats.lookups += count
            stats.lookup_skips += count
        return False

    def failed(self, action: Action, error: Exception, count: int = 1) -> None:
        """Count and log a failed call (raise it when strict); the caller answers "unavailable"."""
        stats = self.stats
        if action.writes:
            stats.put_errors += 1
        else:
            stats.lookups += count
            stats.lookup_errors += count
        self.breaker.failure()
        if self.strict:
            raise error
        LOGGER.warning("Cache tier %s failed on %s, skipped: %r", stats.name, action.value, error)

    def looked_up(self, found: Any) -> Any:
        """Count a lookup that answered ``found`` (an entry or MISSING) and return it."""
        self.breaker.success()
        stats = self.stats
        stats.lookups += 1
        stats.misses += found is MISSING
        return found

    def looked_up_many(self, found: list[Any]) -> list[Any]:
        """Count a batch lookup that answered ``found`` (values or MISSING) and return it."""
        self.breaker.success()
        stats = self.stats
        stats.lookups += len(found)  # with its misses, so hits never go down
        stats.misses += sum(value is MISSING for value in found)
        return found

    def written(self) -> None:
        self.breaker.success()
        self.stats.puts += 1

    def not_found(self, missing: NotFoundError) -> Any:
        """MISSING for a "not here"; a damaged entry is counted too (it is fetched again)."""
        if isinstance(missing, DamagedEntryError):
            self.stats.damaged += 1
        return MISSING

    # -- guarded cache-tier I/O ---------------------------------------------------------
    def lookup_entry(self, type: Any, query: Mapping[str, Any]) -> Any:
        """``(value, age or None)``, MISSING if the tier has none, None if skipped or failed."""
        if not self.admit(Action.LOOKUP):
            return None
        started = time.perf_counter()
        try:
            found = self.read_entry(type, query)
        except NotFoundError as missing:
            found = self.not_found(missing)
        except CALLER_ERRORS:
            raise  # a query the tier cannot key is the caller's error, not the tier's
        except Exception as error:
            self.failed(Action.LOOKUP, error)
            return None
        self.stats.record_latency(time.perf_counter() - started)
        return self.looked_up(found)

    def read_entry(self, type: Any, query: Mapping[str, Any]) -> Any:
        """The raw lookup: ``(value, age or None)`` or MISSING; raises NotFoundError for a 1.x tier."""
        if self.aged:
            return self.element.lookup_entry(type, query)
        return (self.element.get(type, dict(query), self.new_context(query)), None)

    def lookup_many(self, type: Any, queries: Sequence[Mapping[str, Any]], limit: float) -> Any:
        """Values younger than ``limit`` seconds (else MISSING) aligned with ``queries``; None if
        the tier was skipped or failed."""
        if not self.admit(Action.BATCH_LOOKUP, len(queries)):
            return None
        try:
            found = self.answers(type, queries, limit)
        except CALLER_ERRORS:
            raise
        except Exception as error:
            self.failed(Action.BATCH_LOOKUP, error, len(queries))
            return None
        return self.looked_up_many(found)

    def write(
        self, put: Callable[[Any, Any], None], value: Any, context: Any, passed: Container[int] = ()
    ) -> None:
        """``put(value, context)`` (a feed's put or put_many), unless this tier is in ``passed``."""
        if id(self.element) in passed:
            self.stats.put_skips += 1
            return
        if not self.admit(Action.WRITE_BACK):
            return
        try:
            put(value, context)
        except CALLER_ERRORS:
            raise
        except Exception as error:
            self.failed(Action.WRITE_BACK, error)
            return
        self.written()

    def write_many(
        self,
        store_type: Any,
        entries: Sequence[tuple[Mapping[str, Any], Any]],
        seconds: Any = MISSING,
        passed: Container[int] = (),
    ) -> None:
        """Store (query, value) pairs in one round trip (a keyed store only)."""

        def store(pairs: Any, _context: Any) -> None:
            self.element.store_many(store_type, pairs, seconds=seconds)

        self.write(store, entries, None, passed)

    def delete(self, type: Any, query: Mapping[str, Any]) -> int | None:
        """How many entries went (0 or 1), None if skipped or failed (a keyed store only)."""
        if not self.admit(Action.INVALIDATE):
            return None
        try:
            deleted = self.element.delete(type, query)
        except CALLER_ERRORS:
            raise
        except Exception as error:
            self.failed(Action.INVALIDATE, error)
            return None
        self.breaker.success()
        return int(deleted)

    # -- source I/O: counted, never guarded -----------------------------------------------
    def fetch(
        self, type: Any, query: Mapping[str, Any], context: Any, get: Callable[..., Any] | None = None
    ) -> Any:
        """The source's value, or MISSING if it has none; its other errors are counted and raised.

        ``get`` stands in for ``element.get`` (a tracing bridge wraps it in a span).
        """
        stats = self.stats
        stats.calls += 1
        started = time.perf_counter()
        try:
            return (self.element.get if get is None else get)(type, dict(query), context)
        except NotFoundError:
            stats.misses += 1
            return MISSING
        except Exception:
            stats.lookup_errors += 1
            raise
        finally:
            stats.record_latency(time.perf_counter() - started)

    def fetch_many(self, type: Any, queries: Sequence[Mapping[str, Any]]) -> list[Any]:
        """A source's answers (or MISSING) aligned with ``queries``: one call, counted once."""
        self.stats.calls += 1
        return self.answers(type, queries, float("inf"))

    def answers(self, type: Any, queries: Sequence[Mapping[str, Any]], limit: float) -> list[Any]:
        """The raw batch read: values younger than ``limit`` seconds, else MISSING."""
        element = self.element
        if self.keyed:
            entries = element.lookup_many_entries(type, queries)
            return [
                MISSING if e is MISSING or (e[1] is not None and e[1] >= limit) else e[0] for e in entries
            ]
        if self.aged:
            # A tier that tells ages only one at a time (a recorder).
            return [self._fresh(type, query, limit) for query in queries]
        if type in self.batch_types:
            return self._batch(type, queries)
        found = []
        for query in queries:
            try:
                found.append(element.get(type, dict(query), self.new_context(query)))
            except NotFoundError:
                found.append(MISSING)
        return found

    def _fresh(self, type: Any, query: Mapping[str, Any], limit: float) -> Any:
        try:
            value, age = self.element.lookup_entry(type, query)
        except NotFoundError as missing:
            return self.not_found(missing)
        return MISSING if age is not None and age >= limit else value

    def _batch(self, type: Any, queries: Sequence[Mapping[str, Any]]) -> list[Any]:
        batch = {BATCH_KEY: [dict(q) for q in queries]}
        context = self.new_context(batch)
        context[_MANY] = True
        try:
            answers = list(self.element.get_many(type, batch, context))
        except NotFoundError:
            return [MISSING] * len(queries)
        if len(answers) != len(queries):
            raise ConfigurationError(
                f"{self.name}.get_many returned {len(answers)} results for {len(queries)} batch queries"
            )
        return [MISSING if answer is None else answer for answer in answers]
