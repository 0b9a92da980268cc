"""Store: the base of the built-in keyed stores (memory, disk, Redis).

A store is a DataSource and a DataSink for any type (or a declared set of
types) that keys every value by :func:`datapipelines.keys.key_for` of the query
that produced it, and expires it per type. Subclasses implement five backend
primitives; everything about keys, expiry and queries lives here once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .context import TYPE_WILDCARD, PipelineContext
from .data_sink import DataSink
from .data_source import DataSource
from .errors import ConfigurationError, NotFoundError, type_name
from .expiry import DONT_STORE, Expirations
from .keys import key_for

LOGGER = logging.getLogger(__name__)


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()

_QUERY = PipelineContext.Keys.QUERY
_QUERIES = PipelineContext.Keys.QUERIES
_MANY = PipelineContext.Keys.MANY
_PIPELINE = PipelineContext.Keys.PIPELINE
_EXPIRY = PipelineContext.Keys.EXPIRY


def _policy_seconds(type_: Any, context: PipelineContext | None) -> Any:
    """The lifetime a Policy set for ``type_`` on this call, or MISSING."""
    overrides = context.get(_EXPIRY) if context is not None else None
    if overrides and type_ in overrides:
        return overrides[type_]
    return MISSING


class Store(DataSource, DataSink):
    """A keyed, expiring store of any type (or of ``types`` only).

    Subclasses implement ``_load``, ``_load_many_entries``, ``_save_many``, ``_delete_many``
    and ``clear``; values come in and out as Python objects.
    """

    def __init__(
        self,
        *,
        types: Iterable[Any] | None = None,
        expirations: Mapping[Any, Any] | None = None,
        default_expiry: Any = None,
    ) -> None:
        self._types = frozenset(types) if types is not None else None
        self.expirations = Expirations(expirations, default_expiry)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def provides(self) -> Any:
        return TYPE_WILDCARD if self._types is None else self._types

    @property
    def accepts(self) -> Any:
        return self.provides

    # -- backend primitives ------------------------------------------------
    def _load(self, key: str, type_: Any) -> Any:
        """The live value under ``key`` or MISSING."""
        raise NotImplementedError

    def _load_entry(self, key: str, type_: Any) -> Any:
        """``(value, age in seconds or None if unknown)`` under ``key``, or MISSING.

        Stores that know when a value was written override this so policies can
        tell fresh from stale; an unknown age counts as fresh.
        """
        value = self._load(key, type_)
        return MISSING if value is MISSING else (value, None)

    def _load_many_entries(self, keys: Sequence[str], type_: Any) -> list[Any]:
        """``(value, age or None)`` (or MISSING) aligned with ``keys``, in one round trip."""
        return [self._load_entry(key, type_) for key in keys]

    def _save_many(self, entries: Sequence[tuple[str, Any]], seconds: float | None, type_: Any) -> None:
        """Store every (key, value) for ``seconds`` (None: no expiry), in one round trip."""
        raise NotImplementedError

    def _delete_many(self, keys: Sequence[str]) -> int:
        """Remove the keys; return how many were there."""
        raise NotImplementedError

    def clear(self) -> None:
        """Remove everything this store holds."""
        raise NotImplementedError

    # -- keyed API used by the pipeline --------------------------------------
    def _check_type(self, type_: Any) -> None:
        if self._types is not None and type_ not in self._types:
            raise self.unsupported(type_)

    def lookup(self, type_: Any, query: Mapping[str, Any]) -> Any:
        """The value of ``type_`` stored for ``query``, or MISSING."""
        return self._load(key_for(type_, query), type_)

    def lookup_entry(self, type_: Any, query: Mapping[str, Any]) -> Any:
        """``(value, age or None)`` of ``type_`` stored for ``query``, or MISSING."""
        return self._load_entry(key_for(type_, query), type_)

    def lookup_fresh(self, type_: Any, query: Mapping[str, Any], max_age: float) -> Any:
        """The value if it is younger than ``max_age`` seconds (or of unknown age), else MISSING."""
        entry = self._load_entry(key_for(type_, query), type_)
        if entry is MISSING or (entry[1] is not None and entry[1] >= max_age):
            return MISSING
        return entry[0]

    def lookup_many(self, type_: Any, queries: Sequence[Mapping[str, Any]]) -> list[Any]:
        """Values (or MISSING) aligned with ``queries``, fetched in one round trip."""
        return [MISSING if e is MISSING else e[0] for e in self.lookup_many_entries(type_, queries)]

    def lookup_many_entries(self, type_: Any, queries: Sequence[Mapping[str, Any]]) -> list[Any]:
        """``(value, age or None)`` (or MISSING) aligned with ``queries``, in one round trip."""
        self._check_type(type_)
        return self._load_many_entries([key_for(type_, q) for q in queries], type_)

    def store_many(
        self, type_: Any, entries: Sequence[tuple[Mapping[str, Any], Any]], *, seconds: Any = MISSING
    ) -> None:
        """Store (query, value) pairs of ``type_`` in one round trip.

        They expire after the type's configured expiry, or after ``seconds`` when
        given (a Policy's lifetime); a type configured with 0 is never stored.
        None is never stored: it is no value to cache (as in 1.x, the caller still
        gets it), so the next get asks the sources again.
        """
        self._check_type(type_)
        configured = self.expirations.seconds_for(type_)
        if seconds is MISSING or configured == DONT_STORE:
            seconds = configured
        if seconds == DONT_STORE or not entries:
            return
        keyed = [(key_for(type_, q), value) for q, value in entries if value is not None]
        if keyed:
            self._save_many(keyed, seconds, type_)

    def delete(self, type_: Any, query: Mapping[str, Any]) -> bool:
        """Remove the value of ``type_`` for ``query``; True if there was one."""
        return self._delete_many([key_for(type_, query)]) > 0

    # -- DataSource / DataSink ------------------------------------------------
    def get(self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        self._check_type(type)
        value = self._load(key_for(type, query), type)
        if value is MISSING:
            raise NotFoundError(type=type, query=query, tried=[repr(self)])
        return value

    def get_many(
        self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None
    ) -> Iterable[Any]:
        # A key-value store cannot answer "many items matching a query".
        raise NotFoundError(type=type, query=query, tried=[repr(self)])

    def put(self, type: Any, item: Any, context: PipelineContext | None = None) -> None:
        query = query_of_item(self, type, item, context)
        if query is not None:
            self.store_many(type, [(query, item)], seconds=_policy_seconds(type, context))

    def put_many(self, type: Any, items: Iterable[Any], context: PipelineContext | None = None) -> None:
        items = list(items)
        queries = queries_of_items(self, type, items, context)
        pairs = [(q, item) for q, item in zip(queries, items, strict=True) if q is not None]
        self.store_many(type, pairs, seconds=_policy_seconds(type, context))


def query_of_item(
    sink: Any, type_: Any, item: Any, context: PipelineContext | None
) -> Mapping[str, Any] | None:
    """The query that keys ``item`` in ``sink``: the call's query, else the pipeline's query function.

    During get_many write-back an item without a query function is skipped (a
    cache may miss); a direct put without any query is an error, never a silent loss.
    """
    if context is not None:
        if not context.get(_MANY):
            query = context.get(_QUERY)
            if query is not None:
                return query  # type: ignore[no-any-return]
        pipeline = context.get(_PIPELINE)
        if pipeline is not None:
            query = pipeline.query_for(type_, item)
            if query is not None:
                return query  # type: ignore[no-any-return]
        if context.get(_MANY) and context.get(_QUERIES) is None:
            LOGGER.debug("%r skips a %s: no query function keys it", sink, type_name(type_))
            return None
    raise ConfigurationError(
        f"{sink!r} cannot store a {type_name(type_)} without a query: pass query= to put, "
        f"or give the pipeline query_from={{{type_name(type_)}: lambda item: {{...}}}}"
    )


def queries_of_items(
    sink: Any, type_: Any, items: Sequence[Any], context: PipelineContext | None
) -> list[Mapping[str, Any] | None]:
    """The query of each item of a ``put_many``: the call's ``queries=``, else :func:`query_of_item`."""
    queries = context.get(_QUERIES) if context is not None else None
    if queries is None:
        return [query_of_item(sink, type_, item, context) for item in items]
    if len(queries) != len(items):
        raise ConfigurationError(
            f"put_many of {type_name(type_)} got {len(items)} items but {len(queries)} queries"
        )
    return list(queries)
