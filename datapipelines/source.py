"""DataSource: anything the pipeline can ask for a value."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
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
    """Several sources behind one: each type is asked of its sources in order."""

    def __init__(self, sources: Sequence[DataSource]) -> None:
        self._sources = list(sources)
        self._provided = [(source, source.provides) for source in self._sources]
        self._by_type: dict[Any, list[DataSource]] = {}

    @property
    def provides(self) -> Any:
        types: set[Any] = set()
        for _, provided in self._provided:
            if provided is TYPE_WILDCARD:
                return TYPE_WILDCARD
            types.update(provided)
        return types

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
                return getattr(source, method)(type, query, context)
            except NotFoundError:
                continue
        raise NotFoundError(type=type, query=query, tried=[element_name(s) for s in sources])

    def get(self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        return self._first("get", type, query, context)

    def get_many(
        self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None
    ) -> Iterable[Any]:
        return self._first("get_many", type, query, context)
