"""DataSink: anything the pipeline can hand a value to keep."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from .context import TYPE_WILDCARD, PipelineContext
from .dispatch import registered_types, type_dispatch
from .errors import UnsupportedError, type_name


class DataSink(ABC):
    """Stores values of one or more types.

    Subclasses decorate ``put`` and ``put_many`` with ``@DataSink.dispatch`` and
    register handlers with ``@put.register(SomeType)`` taking
    ``(self, item, context=None)``.
    """

    @staticmethod
    def dispatch(method: Any) -> Any:
        return type_dispatch(method, "DataSink")

    @staticmethod
    def unsupported(type: Any) -> UnsupportedError:
        return UnsupportedError(f"The type {type_name(type)} is not supported by this DataSink")

    @property
    def accepts(self) -> Any:
        """The types this sink can store, or TYPE_WILDCARD."""
        types = registered_types(type(self), "put", "put_many")
        return TYPE_WILDCARD if types is None else types

    @abstractmethod
    def put(self, type: Any, item: Any, context: PipelineContext | None = None) -> None:
        """Store one item of ``type``."""

    @abstractmethod
    def put_many(self, type: Any, items: Iterable[Any], context: PipelineContext | None = None) -> None:
        """Store several items of ``type``."""


class CompositeDataSink(DataSink):
    """Several sinks behind one: an item goes to every sink that accepts its type."""

    def __init__(self, sinks: Sequence[DataSink]) -> None:
        self._sinks = list(sinks)

    @property
    def accepts(self) -> Any:
        if any(s.accepts is TYPE_WILDCARD for s in self._sinks):
            return TYPE_WILDCARD
        types: set[Any] = set()
        for sink in self._sinks:
            types.update(sink.accepts)
        return types

    def _sinks_for(self, type: Any) -> list[DataSink]:
        sinks = [s for s in self._sinks if type in s.accepts]
        if not sinks:
            raise self.unsupported(type)
        return sinks

    def put(self, type: Any, item: Any, context: PipelineContext | None = None) -> None:
        for sink in self._sinks_for(type):
            sink.put(type, item, context)

    def put_many(self, type: Any, items: Iterable[Any], context: PipelineContext | None = None) -> None:
        items = list(items)
        for sink in self._sinks_for(type):
            sink.put_many(type, items, context)
