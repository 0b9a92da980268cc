"""Batch reads: ``DataPipeline.get_batch`` asks each tier once for what earlier tiers missed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from .breaker import GUARD_FAILED
from .context import PipelineContext
from .errors import ConfigurationError, DamagedEntryError, NotFoundError, element_name, type_name
from .plan import Feed, Route, convert
from .policy import Policy
from .store import MISSING

T = TypeVar("T")

#: Key of the query that ``get_batch`` hands to the ``get_many`` handler of a
#: source with ``batch_get_many = True``: ``{"queries": [q1, q2, ...]}``; the
#: handler returns results aligned with them (None for a query it cannot answer).
BATCH_KEY = "queries"

_MANY = PipelineContext.Keys.MANY
_SOURCE = PipelineContext.Keys.SOURCE
_EXPIRY = PipelineContext.Keys.EXPIRY


def _fresh(route: Route, query: Mapping[str, Any], limit: float) -> Any:
    """The route's value for ``query`` if it is younger than ``limit`` seconds, else MISSING."""
    try:
        value, age = route.source.lookup_entry(route.source_type, query)  # type: ignore[attr-defined]
    except NotFoundError as missing:
        if isinstance(missing, DamagedEntryError):
            route.stats.damaged += 1
        return MISSING
    return MISSING if age is not None and age >= limit else value


def _bulk_put(feed: Feed, expiry: Mapping[Any, float | None]) -> Callable[[Any, Any], None]:
    """A put function for ``_write`` that stores (query, value) pairs in one round trip."""
    seconds = expiry.get(feed.store_type, MISSING)

    def put(entries: Any, _context: Any) -> None:
        feed.sink.store_many(feed.store_type, entries, seconds=seconds)  # type: ignore[attr-defined]

    return put


class BatchReads:
    """The batch half of :class:`~datapipelines.DataPipeline` (a mixin: it uses the
    pipeline's plans, policies, contexts and tier guards)."""

    # Provided by DataPipeline.
    routes: Callable[[Any], list[Route]]
    _policies: dict[Any, Policy]
    _context: Callable[[Any], PipelineContext]
    _guarded: Callable[..., Any]
    _write: Callable[..., None]

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
        routes = self.routes(type)
        policy = self._policies.get(type)
        expiry = {type: policy.lifetime()} if policy is not None and policy.ttl is not None else {}
        queries = list(queries)
        results: list[Any] = [MISSING] * len(queries)
        pending = list(range(len(queries)))
        tried = []
        # Tiers that failed or were skipped in this batch are not written back either.
        passed: set[int] = set()
        for route in routes:
            if not pending:
                break
            tried.append(route.name)
            found = self._fetch_batch(route, [queries[i] for i in pending], policy, passed)
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
            self._write_back_batch(route, route.before, [(queries[i], v) for i, v in hits], expiry, passed)
            converted = [(i, convert(route.chain, v, self._context(queries[i]))) for i, v in hits]
            self._write_back_batch(
                route, route.after, [(queries[i], v) for i, v in converted], expiry, passed
            )
            for index, value in converted:
                results[index] = value
            hit_indexes = {index for index, _ in hits}
            pending = [index for index in pending if index not in hit_indexes]
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

    def _fetch_batch(
        self, route: Route, queries: list[Mapping[str, Any]], policy: Policy | None, passed: set[int]
    ) -> list[Any]:
        source = route.source
        if route.cached:
            if id(source) in passed:
                return [MISSING] * len(queries)
            found = self._guarded(
                source, route.stats, route.breaker, "batch lookup",
                lambda: self._ask_batch(route, queries, policy), len(queries),
            )  # fmt: skip
            if found is GUARD_FAILED:
                passed.add(id(source))
                return [MISSING] * len(queries)
            stats, missed = route.stats, sum(value is MISSING for value in found)
            stats.lookups += len(queries)  # with its misses, so hits never go down (see _guarded)
            stats.misses += missed
            return found
        route.stats.calls += 1
        return self._ask_batch(route, queries, policy)

    def _ask_batch(self, route: Route, queries: list[Mapping[str, Any]], policy: Policy | None) -> list[Any]:
        source = route.source
        if route.keyed:
            # A batch serves fresh values only: past its ttl a value is fetched again.
            limit = policy.fresh_limit if policy is not None else float("inf")
            entries = source.lookup_many_entries(route.source_type, queries)  # type: ignore[attr-defined]
            return [
                MISSING if e is MISSING or (e[1] is not None and e[1] >= limit) else e[0] for e in entries
            ]
        if route.aged:
            # A tier that tells ages only one at a time (a recorder): fresh values only, too.
            limit = policy.fresh_limit if policy is not None else float("inf")
            return [_fresh(route, query, limit) for query in queries]
        many = getattr(type(source), "get_many", None)
        if getattr(source, "batch_get_many", False) and route.source_type in getattr(
            many, "registered_types", ()
        ):
            batch = {BATCH_KEY: [dict(q) for q in queries]}
            context = self._context(batch)
            context[_MANY] = True
            try:
                answers = list(source.get_many(route.source_type, batch, context))
            except NotFoundError:
                return [MISSING] * len(queries)
            if len(answers) != len(queries):
                raise ConfigurationError(
                    f"{element_name(source)}.get_many returned {len(answers)} results "
                    f"for {len(queries)} batch queries"
                )
            return [MISSING if answer is None else answer for answer in answers]
        found = []
        for query in queries:
            try:
                found.append(source.get(route.source_type, dict(query), self._context(query)))
            except NotFoundError:
                found.append(MISSING)
        return found

    def _write_back_batch(
        self,
        route: Route,
        feeds: Sequence[Feed],
        pairs: list[tuple[Mapping[str, Any], Any]],
        expiry: Mapping[Any, float | None],
        passed: set[int],
    ) -> None:
        """Write what ``route`` answered back: one bulk put per store, per item elsewhere."""

        def context_for(query: Mapping[str, Any]) -> PipelineContext:
            context = self._context(query)
            context[_SOURCE] = route.source_name
            if expiry:
                context[_EXPIRY] = expiry
            return context

        for feed in feeds:
            if feed.keyed:
                converted = [(q, convert(feed.chain, v, context_for(q))) for q, v in pairs]
                self._write(feed, _bulk_put(feed, expiry), converted, None, passed)
            else:
                for query, value in pairs:
                    self._write(feed, feed.put, value, context_for(query), passed)
