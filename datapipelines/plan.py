"""Planning: which sources can answer a type, through which transformer chain,
and what every sink before them receives.

A plan is built once per requested type and cached by :class:`Plans`, so a hit
never searches the type graph. Plans are immutable data that refer to the
elements' :class:`~datapipelines.tier.Tier`; planning does no I/O.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .context import TYPE_WILDCARD
from .data_sink import DataSink
from .data_source import DataSource
from .data_transformer import CompositeDataTransformer, DataTransformer
from .errors import NoConversionError, element_name, type_name
from .stats import ElementStats
from .store import Store
from .tier import Tier

Chain = tuple[tuple[DataTransformer, Any], ...]


def convert(chain: Chain, value: Any, context: Any) -> Any:
    for transformer, target_type in chain:
        value = transformer.transform(target_type, value, context)
    return value


class TypeGraph:
    """Types as nodes, the cheapest transformer between two types as an edge."""

    def __init__(self, transformers: Iterable[DataTransformer]) -> None:
        self.edges: dict[Any, dict[Any, tuple[int, DataTransformer]]] = {}
        for transformer in _flatten(transformers):
            cost = transformer.cost
            for from_type, to_types in transformer.transforms.items():
                for to_type in to_types:
                    current = self.edges.setdefault(from_type, {}).get(to_type)
                    if current is None or cost < current[0]:
                        self.edges[from_type][to_type] = (cost, transformer)
        self._paths: dict[tuple[Any, Any], tuple[int, Chain] | None] = {}

    def cheapest(self, from_type: Any, to_type: Any) -> tuple[int, Chain] | None:
        """(cost, chain) of the cheapest conversion, or None. Dijkstra, memoised."""
        pair = (from_type, to_type)
        if pair in self._paths:
            return self._paths[pair]
        result: tuple[int, Chain] | None = None
        if from_type == to_type:
            result = (0, ())
        else:
            tie = itertools.count()
            frontier: list[tuple[int, int, Any, Chain]] = [(0, next(tie), from_type, ())]
            settled: set[Any] = set()
            while frontier:
                cost, _, node, chain = heapq.heappop(frontier)
                if node == to_type:
                    result = (cost, chain)
                    break
                if node in settled:
                    continue
                settled.add(node)
                for target, (step, transformer) in self.edges.get(node, {}).items():
                    if target not in settled:
                        heapq.heappush(
                            frontier, (cost + step, next(tie), target, chain + ((transformer, target),))
                        )
        self._paths[pair] = result
        return result

    def best_from(self, from_type: Any, targets: Any) -> tuple[int, Any, Chain] | None:
        """The cheapest conversion of ``from_type`` into any of ``targets``."""
        if from_type in targets:
            return (0, from_type, ())
        best = None
        for target in targets:
            found = self.cheapest(from_type, target)
            if found is not None and (best is None or found[0] < best[0]):
                best = (found[0], target, found[1])
        return best


def _flatten(transformers: Iterable[DataTransformer]) -> list[DataTransformer]:
    flat: list[DataTransformer] = []
    for transformer in transformers:
        if isinstance(transformer, CompositeDataTransformer):
            flat.extend(_flatten(transformer.transformers))
        else:
            flat.append(transformer)
    return flat


@dataclass(frozen=True, slots=True, eq=False)
class Feed:
    """A sink together with the type it stores, the conversion that gets it there, and its tier."""

    sink: DataSink
    store_type: Any
    chain: Chain
    tier: Tier

    @property
    def keyed(self) -> bool:
        return self.tier.keyed

    def put(self, value: Any, context: Any) -> None:
        self.sink.put(self.store_type, convert(self.chain, value, context), context)

    def put_many(self, values: Sequence[Any], context: Any) -> None:
        self.sink.put_many(self.store_type, [convert(self.chain, v, context) for v in values], context)


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """One way to answer a type: ask ``source`` (through ``tier``) for ``source_type``, convert
    along ``chain``, write back into the ``before`` feeds (unconverted) and ``after`` (converted).

    Immutable: the hit path reads ``stats``, ``breaker``, ``lookup`` and ``lookup_fresh``
    straight from here (copied from the tier), so it does no second attribute search.
    """

    source: DataSource
    source_type: Any
    chain: Chain
    before: tuple[Feed, ...]
    after: tuple[Feed, ...]
    tier: Tier
    # Past this age (a Policy's soft ttl) a hit takes the slow path; None: any age is fresh.
    max_age: float | None
    stats: ElementStats = field(init=False)
    breaker: Any = field(init=False)
    keyed: bool = field(init=False)
    cached: bool = field(init=False)
    aged: bool = field(init=False)
    # Nothing to convert and nobody to write back to: return the value as it is.
    plain: bool = field(init=False)
    source_name: str = field(init=False)
    name: str = field(init=False)
    # Bound once, so the hit path does no attribute search on the store.
    lookup: Any = field(init=False)
    lookup_fresh: Any = field(init=False)

    def __post_init__(self) -> None:
        tier, source = self.tier, self.source
        derived = {
            "stats": tier.stats,
            "breaker": tier.breaker,
            "keyed": tier.keyed,
            "cached": tier.cached,
            "aged": tier.aged,
            "plain": not self.chain and not self.before and not self.after,
            "source_name": tier.name,
            "name": f"{tier.name} as {type_name(self.source_type)}",
            "lookup": source.lookup if tier.keyed else None,  # type: ignore[attr-defined]
            "lookup_fresh": source.lookup_fresh if tier.keyed else None,  # type: ignore[attr-defined]
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)


TierFor = Callable[[Any], Tier]


def feeds_for(
    graph: TypeGraph, sinks: Iterable[DataSink], before: Any, after: Any, tier_for: TierFor
) -> tuple[list[Feed], list[Feed]]:
    """Split sinks into those fed the source's value and those fed the converted one.

    Each sink gets whichever is cheaper for it to accept; on a tie the converted
    value wins, so caches keep what callers asked for.
    """
    fed_before: list[Feed] = []
    fed_after: list[Feed] = []
    for sink in sinks:
        accepts = sink.accepts
        option_after = graph.best_from(after, accepts)
        option_before = graph.best_from(before, accepts) if before is not after else None
        if option_before is not None and (option_after is None or option_before[0] < option_after[0]):
            fed_before.append(Feed(sink, option_before[1], option_before[2], tier_for(sink)))
        elif option_after is not None:
            fed_after.append(Feed(sink, option_after[1], option_after[2], tier_for(sink)))
    return fed_before, fed_after


def plan_routes(
    graph: TypeGraph,
    sources: Sequence[tuple[DataSource, Sequence[DataSink]]],
    type_: Any,
    *,
    tier_for: TierFor,
    max_age: float | None = None,
) -> list[Route]:
    """Every source that can answer ``type_`` (directly or converted), in pipeline order.

    ``tier_for(element)`` is the tier counting this type's calls to ``element``.
    """
    routes = []
    for source, sinks_before in sources:
        provides = source.provides
        chain: Chain = ()
        if type_ in provides:
            source_type = type_
        else:
            best = None
            for provided in provides:
                found = graph.cheapest(provided, type_)
                if found is not None and (best is None or found[0] < best[0]):
                    best = (found[0], provided, found[1])
            if best is None:
                continue
            _, source_type, chain = best
        before, after = feeds_for(graph, sinks_before, source_type, type_, tier_for)
        tier = tier_for(source)
        routes.append(Route(source, source_type, chain, tuple(before), tuple(after), tier, max_age))
    return routes


def describe_provided(sources: Sequence[tuple[DataSource, Any]]) -> str:
    names = set()
    for source, _ in sources:
        provides = source.provides
        if provides is TYPE_WILDCARD:
            names.add(f"any type ({element_name(source)})")
        else:
            names.update(type_name(t) for t in provides)
    return ", ".join(sorted(names)) or "nothing"


class Plans:
    """The plans of one pipeline: built on first use per requested type, then reused.

    ``tier_for(element, type)`` is the tier counting ``type``'s calls to ``element``
    (``type=None``: the element's own). ``fast`` maps a type to its first route when a
    hit there needs no conversion: the pipeline's ``get`` reads it directly.
    """

    def __init__(
        self,
        elements: Sequence[DataSource | DataSink],
        graph: TypeGraph,
        tier_for: Callable[[Any, Any], Tier],
        policies: Mapping[Any, Any],
    ) -> None:
        self.graph = graph
        self.sources: list[tuple[DataSource, list[DataSink]]] = []
        self.sinks: list[DataSink] = []
        for element in elements:
            if isinstance(element, DataSource):
                self.sources.append((element, list(self.sinks)))
            if isinstance(element, DataSink):
                self.sinks.append(element)
        self.elements = list(elements)
        self._tier_for = tier_for
        self._policies = policies
        self.fast: dict[Any, Route] = {}
        self._routes: dict[Any, list[Route]] = {}
        self._put_feeds: dict[Any, list[Feed]] = {}
        self._stores: dict[Any, frozenset[tuple[Tier, Any]]] = {}

    def routes(self, type: Any) -> list[Route]:
        """The routes for ``type``; NoConversionError if no source can provide it."""
        routes = self._routes.get(type)
        if routes is None:
            policy = self._policies.get(type)
            limit = policy.soft_limit if policy is not None else float("inf")
            routes = plan_routes(
                self.graph, self.sources, type, tier_for=lambda e: self._tier_for(e, type),
                max_age=None if limit == float("inf") else limit,
            )  # fmt: skip
            if not routes:
                raise NoConversionError(
                    f"No source can provide {type_name(type)}, not even through transformers; "
                    f"the sources provide: {describe_provided(self.sources)}"
                )
            self._routes[type] = routes
            first = routes[0]
            # A tier that only tells its ages through lookup_entry (a recorder) takes the slow path.
            if first.cached and first.plain and first.source_type is type and first.keyed == first.aged:
                self.fast[type] = first
        return routes

    def put_feeds(self, type: Any) -> list[Feed]:
        """The sinks a direct ``put`` of ``type`` feeds, each with its conversion."""
        feeds = self._put_feeds.get(type)
        if feeds is None:
            _, feeds = feeds_for(self.graph, self.sinks, type, type, lambda e: self._tier_for(e, type))
            self._put_feeds[type] = feeds
        return feeds

    def stores_of(self, type: Any) -> frozenset[tuple[Tier, Any]]:
        """Every (keyed store's tier, stored type) that may hold a value on the way to ``type``."""
        targets = self._stores.get(type)
        if targets is None:
            found: set[tuple[Tier, Any]] = set()
            for element in self.elements:
                if isinstance(element, Store) and type in element.accepts:
                    found.add((self._tier_for(element, None), type))
            with contextlib.suppress(NoConversionError):
                for route in self.routes(type):
                    for feed in route.before + route.after:
                        if feed.keyed:
                            found.add((self._tier_for(feed.sink, None), feed.store_type))
            targets = self._stores[type] = frozenset(found)
        return targets

    def forget(self, type: Any) -> None:
        """Plan ``type`` again on next use (its policy changed)."""
        self._routes.pop(type, None)
        self.fast.pop(type, None)

    def add_source(self, source: DataSource) -> None:
        """Put ``source`` after every element (every sink is then before it) and plan again."""
        self.elements.append(source)
        self.sources.append((source, list(self.sinks)))
        self._routes.clear()
        self.fast.clear()
        self._stores.clear()
