"""Writes: ``put``, ``put_many``, ``invalidate``, and telling other processes about them.

Every write goes through the sink's :class:`~datapipelines.tier.Tier`, so a failing
sink is counted, logged and skipped as on the read path's write-back.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from .context import PipelineContext
from .errors import ConfigurationError, type_name
from .keys import key_for
from .plan import Plans
from .protocols import InvalidationBackend
from .reads import NegativeCache

LOGGER = logging.getLogger(__name__)

_QUERIES = PipelineContext.Keys.QUERIES


class Writes:
    """The write half of a pipeline. ``pipeline`` is the facade, named as the publisher of
    what it announces; ``query_for(type, item)`` derives an item's query."""

    def __init__(
        self,
        pipeline: Any,
        plans: Plans,
        *,
        new_context: Callable[[Any], PipelineContext],
        query_for: Callable[[Any, Any], Mapping[str, Any] | None],
        negative: NegativeCache,
        invalidation: InvalidationBackend | None,
    ) -> None:
        self.pipeline = pipeline
        self.plans = plans
        self.new_context = new_context
        self.query_for = query_for
        self.negative = negative
        self.invalidation = invalidation

    def put(self, type: Any, item: Any, query: Mapping[str, Any] | None) -> None:
        feeds = self.plans.put_feeds(type)
        if not feeds:
            return
        query = query if query is not None else self.query_for(type, item)
        context = self.new_context(query)
        for feed in feeds:
            feed.tier.write(feed.put, item, context)
        if query is not None:
            self.announce(type, [query])

    def put_many(self, type: Any, items: Iterable[Any], queries: Sequence[Mapping[str, Any]] | None) -> None:
        feeds = self.plans.put_feeds(type)
        if not feeds:
            return
        items = list(items)
        if queries is not None and len(queries) != len(items):
            raise ConfigurationError(f"put_many got {len(items)} items but {len(queries)} queries")
        context = self.new_context(None)
        context[_QUERIES] = list(queries) if queries is not None else None
        for feed in feeds:
            feed.tier.write(feed.put_many, items, context)
        derived = queries if queries is not None else [self.query_for(type, item) for item in items]
        self.announce(type, [q for q in derived if q is not None])

    def invalidate(self, type: Any, query: Mapping[str, Any]) -> int:
        removed = 0
        for tier, store_type in self.plans.stores_of(type):
            deleted = tier.delete(store_type, query)
            if deleted is None:
                LOGGER.warning("%s could not invalidate %s %r", tier.name, type_name(type), query)
            else:
                removed += deleted
        with contextlib.suppress(TypeError):
            self.negative.forget((type, key_for(type, query)))
        self.announce(type, [query])
        return removed

    def announce(self, type: Any, queries: Sequence[Mapping[str, Any]]) -> None:
        """Tell other processes' memory tiers to drop these queries' keys."""
        if self.invalidation is None or not queries:
            return
        keys = set()
        for _, store_type in self.plans.stores_of(type):
            for query in queries:
                with contextlib.suppress(TypeError):
                    keys.add(key_for(store_type, query))
        if keys:
            self.invalidation.publish(sorted(keys), pipeline=self.pipeline)
