"""Planning: which sources can answer a type, through which transformer chain,
and what every sink before them receives.

A plan is built once per requested type and cached by the pipeline, so a hit
never searches the type graph.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from .context import TYPE_WILDCARD
from .data_sink import DataSink
from .data_source import DataSource
from .data_transformer import CompositeDataTransformer, DataTransformer
from .errors import element_name, type_name
from .store import Store

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


class Feed:
    """A sink together with the type it stores and the conversion that gets it there."""

    __slots__ = ("sink", "store_type", "chain", "keyed", "stats", "breaker")

    def __init__(self, sink: DataSink, store_type: Any, chain: Chain) -> None:
        self.sink = sink
        self.store_type = store_type
        self.chain = chain
        self.keyed = isinstance(sink, Store)
        self.stats: Any = None
        self.breaker: Any = None

    def attach(self, stats: Any, breaker: Any) -> None:
        self.stats, self.breaker = stats, breaker

    def put(self, value: Any, context: Any) -> None:
        self.sink.put(self.store_type, convert(self.chain, value, context), context)

    def put_many(self, values: Sequence[Any], context: Any) -> None:
        self.sink.put_many(self.store_type, [convert(self.chain, v, context) for v in values], context)


class Route:
    """One way to answer a type: ask ``source`` for ``source_type``, convert along ``chain``."""

    __slots__ = (
        "source", "source_type", "chain", "before", "after", "keyed", "cached", "plain", "name",
        "source_name", "stats", "breaker", "lookup", "lookup_fresh", "max_age", "aged",
    )

    def __init__(
        self, source: DataSource, source_type: Any, chain: Chain, before: list[Feed], after: list[Feed]
    ) -> None:
        self.source = source
        self.source_type = source_type
        self.chain = chain
        self.before = tuple(before)
        self.after = tuple(after)
        self.keyed = isinstance(source, Store)
        # A cache tier is anything that is both a source and a sink (a "data store").
        self.cached = isinstance(source, DataSink)
        # It tells the age of what it answers (lookup_entry), so a Policy applies to it.
        self.aged = self.keyed or (self.cached and callable(getattr(source, "lookup_entry", None)))
        # Nothing to convert and nobody to write back to: return the value as it is.
        self.plain = not chain and not before and not after
        self.source_name = element_name(source)
        self.name = f"{self.source_name} as {type_name(source_type)}"
        self.stats: Any = None
        self.breaker: Any = None
        # Bound once, so the hit path does no attribute search on the store.
        self.lookup: Any = getattr(source, "lookup", None)
        self.lookup_fresh: Any = getattr(source, "lookup_fresh", None)
        self.max_age: float | None = None

    def attach(self, stats: Any, breaker: Any, policy: Any) -> None:
        """Wire the pipeline's counters, breaker and the type's policy into this route."""
        self.stats, self.breaker = stats, breaker
        limit = policy.soft_limit if policy is not None else float("inf")
        self.max_age = None if limit == float("inf") else limit


def feeds_for(graph: TypeGraph, sinks: Iterable[DataSink], before: Any, after: Any) -> tuple[list, list]:
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
            fed_before.append(Feed(sink, option_before[1], option_before[2]))
        elif option_after is not None:
            fed_after.append(Feed(sink, option_after[1], option_after[2]))
    return fed_before, fed_after


def plan_routes(
    graph: TypeGraph, sources: Sequence[tuple[DataSource, Sequence[DataSink]]], type_: Any
) -> list[Route]:
    """Every source that can answer ``type_`` (directly or converted), in pipeline order."""
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
        before, after = feeds_for(graph, sinks_before, source_type, type_)
        routes.append(Route(source, source_type, chain, before, after))
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
