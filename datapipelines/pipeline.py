"""DataPipeline: ask an ordered chain of stores and sources for a typed value.

The facade: it keeps 1.x's surface (and Cassiopeia's ``_sources`` / ``_sinks``),
builds one :class:`~datapipelines.tier.Tier` per element, checks every extension
point once (:mod:`datapipelines.protocols`), and hands reads to
:mod:`datapipelines.reads` and writes to :mod:`datapipelines.writes`. The memory
hit of :meth:`DataPipeline.get` is hand-written here, so a hit makes no other call.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .breaker import NO_BREAKER, CircuitBreaker
from .cache_mode import mode_flags
from .context import PipelineContext, current_session, in_session
from .data_sink import DataSink
from .data_source import DataSource
from .data_transformer import DataTransformer
from .errors import ConfigurationError, DamagedEntryError, NotFoundError, element_name, type_name
from .plan import Plans, Route, TypeGraph
from .policy import Policy
from .protocols import InvalidationBackend, require, traits_of
from .reads import NegativeCache, Reads, Result
from .remote import partition
from .stats import SAMPLE_EVERY, ElementStats
from .store import MISSING, Store
from .tier import Tier
from .writes import Writes

if TYPE_CHECKING:
    from .redis.lock import RedisLock  # for the annotation only: RedisLock loads redis-py

T = TypeVar("T")

__all__ = ["DataPipeline", "Result", "current_session", "is_tier"]

_SAMPLE_MASK = SAMPLE_EVERY - 1


def is_tier(element: Any) -> bool:
    """Whether ``stats()`` counts an element among the tiers: it is both a source and a sink."""
    return isinstance(element, DataSource) and isinstance(element, DataSink)


class DataPipeline:
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
    - ``invalidation``: an :class:`~datapipelines.protocols.InvalidationBackend`
      (``attach(pipeline)`` and ``publish(keys)``, see :mod:`datapipelines.invalidation`)
      that tells other processes' memory tiers about invalidations and puts.
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
        invalidation: InvalidationBackend | None = None,
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
        if invalidation is not None:
            require(invalidation, InvalidationBackend, "is the invalidation= option")
        self.name = name
        self._elements = list(elements)
        self._transformers = list(transformers or ())
        self._graph = TypeGraph(self._transformers)
        self._query_from = dict(query_from or {})
        self._strict = strict
        self._breaker_factory = breaker
        self._stats: dict[int, ElementStats] = {}
        # (element id, requested type) -> its counters, when counting by type.
        self._type_stats: dict[tuple[int, Any], ElementStats] | None = {} if stats_by_type else None
        self._tiers: dict[int, Tier] = {}
        self._typed_tiers: dict[tuple[int, Any], Tier] = {}
        self._recorders: list[Any] = []
        # Sections other parts add to stats() (the ingest's).
        self._reports: dict[str, Callable[[], Any]] = {}
        for element in self._elements:
            self._add_tier(element)
        self._policies: dict[Any, Policy] = {}
        self._plans = Plans(self._elements, self._graph, self._tier_for, self._policies)
        # 1.x layout, which Cassiopeia reads: (source, set of sinks before it), set of sinks.
        self._sources = [(source, set(sinks)) for source, sinks in self._plans.sources]
        self._sinks = set(self._plans.sinks)
        # Per type, the fastest tier's route when a hit there needs no conversion (the plans' own dict).
        self._fast: dict[Any, Route] = self._plans.fast
        negative = NegativeCache(negative_cache_size)
        self._reads = Reads(
            self, self._plans, self._policies, new_context=self._context, clock=clock,
            process_lock=process_lock, negative=negative,
        )  # fmt: skip
        self._writes = Writes(
            self, self._plans, new_context=self._context, query_for=self.query_for, negative=negative,
            invalidation=invalidation,
        )  # fmt: skip
        for policy_type, policy in (policies or {}).items():
            self.set_policy(policy_type, policy)
        if invalidation is not None:
            invalidation.attach(self)

    def _add_tier(self, element: DataSource | DataSink) -> None:
        """Check what ``element`` claims to be and give it its Tier."""
        traits = traits_of(element)
        factory = self._breaker_factory
        stats = self._stats[id(element)] = ElementStats(element_name(element))
        # Pure sources have no breaker: their errors reach the caller.
        breaker = factory() if factory is not None and isinstance(element, DataSink) else NO_BREAKER
        self._tiers[id(element)] = Tier(
            element, stats, breaker, strict=self._strict, new_context=self._context,
            keyed=traits.keyed, cached=traits.cached, aged=traits.aged, in_process=traits.in_process,
            batch_types=traits.batch_types,
        )  # fmt: skip
        if traits.recorder:
            self._recorders.append(element)

    def _tier_for(self, element: Any, type: Any) -> Tier:
        """The tier counting ``type``'s calls to ``element``: the element's own, or its twin per type."""
        tier = self._tiers[id(element)]
        if type is None or self._type_stats is None:
            return tier
        key = (id(element), type)
        typed = self._typed_tiers.get(key)
        if typed is None:
            stats = self._type_stats[key] = ElementStats(tier.name)
            typed = self._typed_tiers[key] = tier.counted_in(stats)
        return typed

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
        self._add_tier(source)
        self._elements.append(source)
        self._sources.append((source, set(self._plans.sinks)))
        self._plans.add_source(source)

    def set_policy(self, type: Any, policy: Policy | None) -> None:
        """Give ``type`` a :class:`Policy` (None removes it)."""
        if policy is not None and not isinstance(policy, Policy):
            raise ConfigurationError(f"The policy for {type_name(type)} must be a Policy, got {policy!r}")
        if policy is None:
            self._policies.pop(type, None)
        else:
            self._policies[type] = policy
        self._plans.forget(type)

    @property
    def _tracer(self) -> Any:
        """The tracing bridge's hook (set by :mod:`datapipelines.otel`), read on the miss path only."""
        return self._reads.tracer

    @_tracer.setter
    def _tracer(self, tracer: Any) -> None:
        self._reads.tracer = tracer

    # -- planning ---------------------------------------------------------------
    @property
    def elements(self) -> list[DataSource | DataSink]:
        return list(self._elements)

    def routes(self, type: Any) -> list[Route]:
        """The plan for ``type``: built on first use, then reused."""
        return self._plans.routes(type)

    def query_for(self, type: Any, item: Any) -> Mapping[str, Any] | None:
        """The query that identifies ``item``, from ``query_from``; None if there is no function."""
        function = self._query_from.get(type)
        return None if function is None else function(item)

    def _context(self, query: Any) -> PipelineContext:
        # Keyword form is the fastest way to build it; the names are Keys.PIPELINE and Keys.QUERY.
        return PipelineContext(pipeline=self, query=query)

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
                    return self._reads.resolve(type, query, False, False, 1).value  # type: ignore[no-any-return]
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
            return self._reads.resolve(type, query, refresh, only_cached, 0)
        flags = mode_flags(cache_mode, refresh, only_cached)
        return self._reads.resolve(type, query, flags.refresh, flags.only_cached, 0, flags.write_back)

    def get_batch(
        self, type: type[T] | Any, queries: Sequence[Mapping[str, Any]], *, default: Any = MISSING
    ) -> list[T]:
        """Values aligned with ``queries``; each tier is asked only for what earlier tiers missed.

        Built-in stores answer in one round trip each; a source that sets
        ``batch_get_many = True`` and has a ``get_many`` handler gets one call for
        all remaining misses (``{"queries": [...]}``); other sources one call per
        query (a 1.x ``get_many`` expects its own query format, so it is opt-in).
        Write-back is one bulk put per store.
        Queries found nowhere raise one NotFoundError naming them, unless
        ``default`` is given.
        """
        return self._reads.get_batch(type, queries, default)

    def get_many(self, type: type[T] | Any, query: Mapping[str, Any], streaming: bool = False) -> Iterable[T]:
        """The values of ``type`` that ``query`` names, from the first source that has them.

        Not streaming: a list, written back in bulk. Streaming: a generator that
        writes each item back as it is consumed.
        """
        return self._reads.get_many(type, query, streaming)

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
            if isinstance(element, DataSink):
                entry["breaker"] = self._tiers[id(element)].breaker.state
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

    # -- writing ------------------------------------------------------------------
    def put(self, type: Any, item: Any, *, query: Mapping[str, Any] | None = None) -> None:
        """Hand ``item`` to every sink that accepts ``type`` (or a conversion of it).

        Built-in stores key it by ``query``, or by the pipeline's ``query_from``
        function for the type. A type no sink accepts stores nothing, as in 1.x.
        """
        self._writes.put(type, item, query)

    def put_many(
        self, type: Any, items: Iterable[Any], *, queries: Sequence[Mapping[str, Any]] | None = None
    ) -> None:
        """``put`` for several items; ``queries``, if given, key them one by one."""
        self._writes.put_many(type, items, queries)

    def invalidate(self, type: Any, query: Mapping[str, Any]) -> int:
        """Remove the value for ``query`` from every store; return how many entries went.

        Besides ``type`` itself, the types a store is fed on the way to ``type``
        (a raw payload kept before conversion, say) are removed too, and so is a
        remembered NotFoundError. With ``invalidation=`` set, other processes'
        memory tiers drop the key as well. A store that fails, or whose breaker is
        open, is skipped with a warning: its entry stays until it expires.
        """
        return self._writes.invalidate(type, query)

    def local_stores(self) -> list[Store]:
        """The stores that live in this process (what cross-process invalidation must clear)."""
        return [e for e in self._elements if self._tiers[id(e)].in_process]  # type: ignore[misc]

    @property
    def recorders(self) -> tuple[Any, ...]:
        """The elements that record remote responses and sessions (the audit recorder)."""
        return tuple(self._recorders)

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
        recorders = self._recorders
        session_id = uuid.uuid4().hex
        for recorder in recorders:
            recorder.open_session(session_id, name, dict(meta or {}))
        try:
            with in_session(session_id), partition(as_of_bucket=as_of_bucket, cache_tag=cache_tag):
                yield session_id
        finally:
            for recorder in recorders:
                recorder.close_session(session_id)
