"""DataSource: anything the pipeline can ask for a value."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any

from .context import TYPE_WILDCARD, PipelineContext
from .dispatch import registered_types, type_dispatch
from .errors import NotFoundError, UnsupportedError, element_name, type_name


class DataSource(ABC):
    """Provides values of one or more types for a query.

    Subclasses decorate ``get`` and ``get_many`` with ``@DataSource.dispatch`` and
    register one handler per type::

        class Users(DataSource):
            @DataSource.dispatch
            def get(self, type, query, context=None): ...

            @DataSource.dispatch
            def get_many(self, type, query, context=None): ...

            @get.register(User)
            def get_user(self, query, context=None):
                ...  # raise NotFoundError when the user is not here
    """

    @staticmethod
    def dispatch(method: Any) -> Any:
        return type_dispatch(method, "DataSource")

    @staticmethod
    def unsupported(type: Any) -> UnsupportedError:
        return UnsupportedError(f"The type {type_name(type)} is not supported by this DataSource")

    @property
    def provides(self) -> Any:
        """The types this source can provide, or TYPE_WILDCARD."""
        types = registered_types(type(self), "get", "get_many")
        return TYPE_WILDCARD if types is None else types

    @abstractmethod
    def get(self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        """Return the value of ``type`` for ``query`` or raise NotFoundError."""

    @abstractmethod
    def get_many(
        self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None
    ) -> Iterable[Any]:
        """Return the values of ``type`` that ``query`` names."""


class CompositeDataSource(DataSource):
    """Several sources behind one: each type is asked of its sources in order.

    ``_sources`` is laid out as in 1.x, which plugins such as Cassiopeia's read:
    each provided type maps to the list of sources for it, in the order given; a
    wildcard source is listed under TYPE_WILDCARD. Each source is handed its own
    copy of the query, so what one source writes into it never reaches the next.
    """

    def __init__(self, sources: Iterable[DataSource]) -> None:
        self._sources: dict[Any, list[DataSource]] = {}
        self._provided: list[tuple[DataSource, Any]] = []
        for source in sources:
            provided = source.provides
            self._provided.append((source, provided))
            for provided_type in (TYPE_WILDCARD,) if provided is TYPE_WILDCARD else provided:
                self._sources.setdefault(provided_type, []).append(source)
        # Per type, the sources asked for it, built from the same elements on first use.
        self._by_type: dict[Any, list[DataSource]] = {}

    @property
    def provides(self) -> Any:
        return TYPE_WILDCARD if TYPE_WILDCARD in self._sources else self._sources.keys()

    def _sources_for(self, type: Any) -> list[DataSource]:
        sources = self._by_type.get(type)
        if sources is None:
            # In the order given: a wildcard source keeps its place among the typed ones.
            sources = self._by_type[type] = [s for s, provided in self._provided if type in provided]
        if not sources:
            raise self.unsupported(type)
        return sources

    def _first(self, method: str, type: Any, query: Mapping[str, Any], context: Any) -> Any:
        """The answer of the first source (in order) that has one."""
        sources = self._sources_for(type)
        for source in sources:
            try:
                return getattr(source, method)(type, copy.deepcopy(query), context)
            except NotFoundError:
                continue
        raise NotFoundError(type=type, query=query, tried=[element_name(s) for s in sources])

    def get(self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        return self._first("get", type, query, context)

    def get_many(
        self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None
    ) -> Iterable[Any]:
        return self._first("get_many", type, query, context)
