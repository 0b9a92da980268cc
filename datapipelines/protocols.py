"""The extension points of a pipeline, each a :class:`typing.Protocol`.

An element (or option) claims an extension point in a way that cannot happen by
accident: a keyed store subclasses :class:`~datapipelines.store.Store`, a response
recorder subclasses (or registers with) :class:`datapipelines.remote.ResponseRecorder`,
an in-process store sets ``in_process = True``, a batch source sets
``batch_get_many = True``, a tier that tells ages has ``lookup_entry``, and an
invalidation backend is passed as ``invalidation=``. The pipeline checks each
claim once, when it is built (:func:`traits_of`, :func:`require`), keeps the
answer in the element's Tier, and never probes again: a claim with a missing
method is a ConfigurationError naming the element and the method.

A method that merely shares a name claims nothing: a catalogue's ``record(type,
item, query=...)`` does not make it a response recorder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

from .data_sink import DataSink
from .data_source import DataSource
from .errors import ConfigurationError, element_name
from .remote import RawResponse
from .remote import ResponseRecorder as RecorderBase
from .store import Store


class KeyedStore(Protocol):
    """A tier keyed by :func:`~datapipelines.keys.key_for`: looked up and written in bulk."""

    def lookup(self, type_: Any, query: Mapping[str, Any]) -> Any: ...
    def lookup_entry(self, type_: Any, query: Mapping[str, Any]) -> Any: ...
    def lookup_fresh(self, type_: Any, query: Mapping[str, Any], max_age: float) -> Any: ...
    def lookup_many_entries(self, type_: Any, queries: Sequence[Mapping[str, Any]]) -> list[Any]: ...
    def store_many(
        self, type_: Any, entries: Sequence[tuple[Mapping[str, Any], Any]], *, seconds: Any
    ) -> None: ...
    def delete(self, type_: Any, query: Mapping[str, Any]) -> bool: ...


class InProcessStore(KeyedStore, Protocol):
    """A keyed store in this process's memory: re-checked inline before a source call, and
    cleared by cross-process invalidation."""

    in_process: bool


class EntryLookup(Protocol):
    """A cache tier that tells the age of what it answers (the audit recorder), so a Policy applies."""

    def lookup_entry(self, type: Any, query: Mapping[str, Any]) -> tuple[Any, float | None]: ...


class ResponseRecorder(Protocol):
    """Keeps every remote response, errors included (:func:`datapipelines.remote.partition`)."""

    def record(self, response: RawResponse, context: Any = None) -> Any: ...


class SessionRecorder(Protocol):
    """Records the sessions ``pipeline.session(...)`` opens."""

    def open_session(self, session_id: str, name: str, meta: Mapping[str, Any]) -> None: ...
    def close_session(self, session_id: str) -> None: ...


class BatchSource(Protocol):
    """A source whose dispatched ``get_many`` answers ``{"queries": [...]}`` with aligned results."""

    batch_get_many: bool

    def get_many(self, type: Any, query: Mapping[str, Any], context: Any = None) -> Any: ...


class InvalidationBackend(Protocol):
    """Tells other processes' in-process stores about invalidations (``invalidation=``)."""

    def attach(self, pipeline: Any) -> None: ...
    def publish(self, keys: Sequence[str], pipeline: Any = None) -> None: ...


def methods(protocol: type) -> tuple[str, ...]:
    """The methods an object needs to satisfy ``protocol`` (its bases' included)."""
    names: list[str] = []
    for base in reversed(protocol.__mro__):
        if getattr(base, "_is_protocol", False) and base is not Protocol:
            own = [n for n, v in vars(base).items() if callable(v) and not n.startswith("_")]
            names += [n for n in own if n not in names]
    return tuple(names)


def require(obj: Any, protocol: type, claim: str) -> None:
    """Refuse ``obj`` unless it has every method of ``protocol``; ``claim`` says why it must."""
    for name in methods(protocol):
        if not callable(getattr(obj, name, None)):
            raise ConfigurationError(
                f"{element_name(obj)} {claim}, so it must satisfy {protocol.__name__}, "
                f"but it has no {name}() method"
            )


class Traits(NamedTuple):
    """What the pipeline knows about an element, worked out once (kept in its Tier)."""

    keyed: bool
    cached: bool
    aged: bool
    in_process: bool
    recorder: bool
    batch_types: frozenset[Any]


def traits_of(element: Any) -> Traits:
    """Check every extension point ``element`` claims; what it turned out to be."""
    keyed = isinstance(element, Store)
    if keyed:
        require(element, KeyedStore, "is a Store")
    in_process = bool(getattr(element, "in_process", False))
    if in_process:
        require(element, InProcessStore, "sets in_process = True")
        if not keyed:
            raise ConfigurationError(
                f"{element_name(element)} sets in_process = True but is no Store: only a keyed store "
                "can be re-checked and cleared by key"
            )
    # A cache tier is anything that is both a source and a sink (a "data store").
    cached = isinstance(element, DataSource) and isinstance(element, DataSink)
    aged = keyed or (cached and hasattr(element, "lookup_entry"))
    if aged:
        require(element, EntryLookup, "has lookup_entry")
    recorder = isinstance(element, RecorderBase)
    if recorder:
        require(element, ResponseRecorder, "is a ResponseRecorder")
        require(element, SessionRecorder, "is a ResponseRecorder")
    batch_types: frozenset[Any] = frozenset()
    if getattr(element, "batch_get_many", False):
        require(element, BatchSource, "sets batch_get_many = True")
        registered = getattr(type(element).get_many, "registered_types", None)
        if registered is None:
            raise ConfigurationError(
                f"{element_name(element)} sets batch_get_many = True, so its get_many must be a "
                "@DataSource.dispatch method with a handler registered per type"
            )
        batch_types = frozenset(registered)
    return Traits(keyed, cached, aged, in_process, recorder, batch_types)
