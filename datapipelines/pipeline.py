"""DataPipeline: ask an ordered chain of stores and sources for a typed value."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from .context import PipelineContext
from .errors import ConfigurationError, NoConversionError, NotFoundError, type_name
from .plan import Feed, Route, TypeGraph, convert, describe_provided, feeds_for, plan_routes
from .sink import DataSink
from .source import DataSource
from .store import MISSING, Store
from .transformer import DataTransformer

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

#: Key of the query that ``get_batch`` hands to a source's ``get_many`` handler:
#: ``{"queries": [q1, q2, ...]}``; the handler returns results aligned with them
#: (None for a query it cannot answer).
BATCH_KEY = "queries"

_PIPELINE = PipelineContext.Keys.PIPELINE
_QUERY = PipelineContext.Keys.QUERY
_QUERIES = PipelineContext.Keys.QUERIES
_MANY = PipelineContext.Keys.MANY

_current_session: contextvars.ContextVar[Any] = contextvars.ContextVar("datapipelines_session", default=None)


def current_session() -> Any:
    """The id of the session opened by ``pipeline.session(...)`` in this context, or None."""
    return _current_session.get()


class DataPipeline:
    """An ordered list of sources and sinks, plus transformers between types.

    ``elements`` are asked fastest first; a value found in one element is written
    back into every sink placed before it. ``query_from`` maps a type to a
    function that derives the query of an item, so a direct ``put`` or a
    ``get_many`` write-back can key it in the built-in stores.
    """

    def __init__(
        self,
        elements: Sequence[DataSource | DataSink],
        transformers: Iterable[DataTransformer] | None = None,
        *,
        query_from: Mapping[Any, Callable[[Any], Mapping[str, Any]]] | None = None,
    ) -> None:
        if not elements:
            raise ConfigurationError("A DataPipeline needs a non-empty sequence of DataSources and DataSinks")
        for element in elements:
            if not isinstance(element, (DataSource, DataSink)):
                raise ConfigurationError(
                    f"Pipeline elements must be DataSources or DataSinks; got {type(element).__name__}"
                )
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
        self._routes: dict[Any, list[Route]] = {}
        self._first_lookup: dict[Any, Callable[[Any, Mapping[str, Any]], Any]] = {}
        self._put_feeds: dict[Any, list[Feed]] = {}

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
            self._routes[type] = routes
            first = routes[0]
            if first.keyed and first.plain and first.source_type is type:
                # The hit path of the fastest tier: one bound method, no loop.
                self._first_lookup[type] = first.source.lookup  # type: ignore[attr-defined]
        return routes

    def _feeds_for_put(self, type: Any) -> list[Feed]:
        feeds = self._put_feeds.get(type)
        if feeds is None:
            _, feeds = feeds_for(self._graph, self._ordered_sinks, type, type)
            self._put_feeds[type] = feeds
        return feeds

    def query_for(self, type: Any, item: Any) -> Mapping[str, Any] | None:
        """The query that identifies ``item``, from ``query_from``; None if there is no function."""
        function = self._query_from.get(type)
        return None if function is None else function(item)

    def _context(self, query: Any) -> PipelineContext:
        context = PipelineContext()
        context[_PIPELINE] = self
        context[_QUERY] = query
        return context

    @staticmethod
    def _select(routes: list[Route], refresh: bool, only_cached: bool) -> list[Route]:
        if refresh:
            routes = [r for r in routes if not r.cached]
        if only_cached:
            routes = [r for r in routes if r.cached]
        return routes

    # -- reading ----------------------------------------------------------------
    def get(
        self, type: type[T] | Any, query: Mapping[str, Any], *, refresh: bool = False, only_cached: bool = False
    ) -> T:
        """The value of ``type`` for ``query``.

        ``refresh=True`` skips every cache tier on the way in (the value is still
        written back); ``only_cached=True`` never calls a source that is not a store.
        """
        if refresh or only_cached:
            routes = self._select(self.routes(type), refresh, only_cached)
        else:
            first = self._first_lookup.get(type)
            if first is not None:
                value = first(type, query)
                if value is not MISSING:
                    return value  # type: ignore[no-any-return]
                routes = self._routes[type][1:]
            else:
                routes = self.routes(type)
        context = None
        for route in routes:
            if route.keyed:
                value = route.source.lookup(route.source_type, query)
                if value is MISSING:
                    continue
                if route.plain:
                    return value  # type: ignore[no-any-return]
                context = self._context(query)
            else:
                if context is None:
                    context = self._context(query)
                try:
                    value = route.source.get(route.source_type, dict(query), context)
                except NotFoundError:
                    continue
                if route.plain:
                    return value  # type: ignore[no-any-return]
            return route.deliver(value, context)  # type: ignore[no-any-return]
        tried = self._select(self._routes[type], refresh, only_cached)
        raise NotFoundError(type=type, query=query, tried=[r.name for r in tried])

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
            for feed in route.before:
                feed.put_many(items, context)
            items = [convert(route.chain, item, context) for item in items]
            for feed in route.after:
                feed.put_many(items, context)
            return items
        raise NotFoundError(type=type, query=query, tried=[r.name for r in routes])

    @staticmethod
    def _stream(route: Route, result: Iterable[Any], context: PipelineContext) -> Iterator[Any]:
        for item in result:
            yield route.deliver(item, context)

    def get_batch(
        self, type: type[T] | Any, queries: Sequence[Mapping[str, Any]], *, default: Any = MISSING
    ) -> list[T]:
        """Values aligned with ``queries``; each tier is asked only for what earlier tiers missed.

        Built-in stores answer in one round trip each; a source with a ``get_many``
        handler gets one call for all remaining misses (``{"queries": [...]}``);
        other sources one call per query. Write-back is one bulk put per store.
        Queries found nowhere raise one NotFoundError naming them, unless
        ``default`` is given.
        """
        routes = self.routes(type)
        queries = list(queries)
        results: list[Any] = [MISSING] * len(queries)
        pending = list(range(len(queries)))
        tried = []
        for route in routes:
            if not pending:
                break
            tried.append(route.name)
            found = self._fetch_batch(route, [queries[i] for i in pending])
            hits = [(index, value) for index, value in zip(pending, found) if value is not MISSING]
            if not hits:
                continue
            self._write_back_batch(route.before, [(queries[i], v) for i, v in hits])
            converted = [(i, convert(route.chain, v, self._context(queries[i]))) for i, v in hits]
            self._write_back_batch(route.after, [(queries[i], v) for i, v in converted])
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

    def _fetch_batch(self, route: Route, queries: list[Mapping[str, Any]]) -> list[Any]:
        source = route.source
        if route.keyed:
            return source.lookup_many(route.source_type, queries)  # type: ignore[attr-defined]
        many = getattr(type(source), "get_many", None)
        if route.source_type in getattr(many, "registered_types", ()):
            context = self._context({BATCH_KEY: queries})
            context[_MANY] = True
            try:
                answers = list(source.get_many(route.source_type, {BATCH_KEY: list(queries)}, context))
            except NotFoundError:
                return [MISSING] * len(queries)
            if len(answers) != len(queries):
                raise ConfigurationError(
                    f"{source!r}.get_many returned {len(answers)} results for {len(queries)} batch queries"
                )
            return [MISSING if answer is None else answer for answer in answers]
        found = []
        for query in queries:
            try:
                found.append(source.get(route.source_type, dict(query), self._context(query)))
            except NotFoundError:
                found.append(MISSING)
        return found

    def _write_back_batch(self, feeds: Sequence[Feed], pairs: list[tuple[Mapping[str, Any], Any]]) -> None:
        for feed in feeds:
            if feed.keyed:
                feed.sink.store_many(  # type: ignore[attr-defined]
                    feed.store_type, [(q, convert(feed.chain, v, None)) for q, v in pairs]
                )
            else:
                for query, value in pairs:
                    feed.put(value, self._context(query))

    # -- writing ------------------------------------------------------------------
    def put(self, type: Any, item: Any, *, query: Mapping[str, Any] | None = None) -> None:
        """Hand ``item`` to every sink that accepts ``type`` (or a conversion of it).

        Built-in stores key it by ``query``, or by the pipeline's ``query_from``
        function for the type. A type no sink accepts stores nothing, as in 1.x.
        """
        feeds = self._feeds_for_put(type)
        if not feeds:
            return
        context = self._context(query if query is not None else self.query_for(type, item))
        for feed in feeds:
            feed.put(item, context)

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
            feed.put_many(items, context)

    def invalidate(self, type: Any, query: Mapping[str, Any]) -> int:
        """Remove the value for ``query`` from every store; return how many entries went.

        Besides ``type`` itself, the types a store is fed on the way to ``type``
        (a raw payload kept before conversion, say) are removed too.
        """
        targets: set[tuple[Store, Any]] = set()
        for element in self._elements:
            if isinstance(element, Store) and type in element.accepts:
                targets.add((element, type))
        with contextlib.suppress(NoConversionError):
            for route in self.routes(type):
                for feed in route.before + route.after:
                    if feed.keyed:
                        targets.add((feed.sink, feed.store_type))  # type: ignore[arg-type]
        return sum(bool(store.delete(store_type, query)) for store, store_type in targets)

    # -- sessions -------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self, name: str, meta: Mapping[str, Any] | None = None) -> Iterator[Any]:
        """Group the calls made inside the block into one named session.

        Every element with ``open_session(session_id, name, meta)`` and
        ``close_session(session_id)`` (the audit recorder) records it; calls made
        inside the block see the id through :func:`current_session`.
        """
        recorders = [e for e in self._elements if callable(getattr(e, "open_session", None))]
        session_id = uuid.uuid4().hex
        for recorder in recorders:
            recorder.open_session(session_id, name, dict(meta or {}))  # type: ignore[union-attr]
        token = _current_session.set(session_id)
        try:
            yield session_id
        finally:
            _current_session.reset(token)
            for recorder in recorders:
                recorder.close_session(session_id)  # type: ignore[union-attr]
