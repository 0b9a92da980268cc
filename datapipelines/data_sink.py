"""DataSink: anything the pipeline can hand a value to keep."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
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
    """Several sinks behind one: an item goes to every sink that accepts its type, once.

    ``_sinks`` is laid out as in 1.x, which plugins such as cassiopeia-diskstore
    read: each accepted type maps to the set of sinks for it; a wildcard sink is
    in the set under TYPE_WILDCARD.
    """

    def __init__(self, sinks: Iterable[DataSink]) -> None:
        self._sinks: dict[Any, set[DataSink]] = {}
        self._accepted: dict[DataSink, Any] = {}  # each sink once, in the order given
        for sink in sinks:
            accepted = self._accepted[sink] = sink.accepts
            for accepted_type in (TYPE_WILDCARD,) if accepted is TYPE_WILDCARD else accepted:
                self._sinks.setdefault(accepted_type, set()).add(sink)
        # Per type, the sinks handed it, built from the same elements on first use.
        self._by_type: dict[Any, list[DataSink]] = {}

    @property
    def accepts(self) -> Any:
        return TYPE_WILDCARD if TYPE_WILDCARD in self._sinks else self._sinks.keys()

    def _sinks_for(self, type: Any) -> list[DataSink]:
        sinks = self._by_type.get(type)
        if sinks is None:
            sinks = self._by_type[type] = [s for s, accepted in self._accepted.items() if type in accepted]
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
