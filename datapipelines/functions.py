"""Sources, sinks and transformers written as plain functions, and cached functions.

::

    @source(Weather)
    def weather(query, context=None) -> Weather: ...

    @sink(Weather)
    def keep(item, context=None) -> None: ...

    @transformer(RawWeather, Weather, cost=1)
    def parse(raw, context=None) -> Weather: ...

    pipeline = DataPipeline([MemoryStore(), keep, weather], [parse])

Each decorator returns a DataSource, DataSink or DataTransformer, so the results
mix freely with 1.x classes. The ``context`` parameter is optional: a function
that takes only the query (or item, or value) is called without it.
:func:`cached` (``pipeline.cached``) turns any function into a source at the
end of a pipeline and routes its calls through the pipeline's tiers.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .data_sink import DataSink
from .data_source import DataSource
from .data_transformer import DataTransformer
from .errors import ConfigurationError, UnsupportedError, type_name

Function = Callable[..., Any]


def _with_optional_context(function: Function, role: str) -> Callable[[Any, Any], Any]:
    """``function`` as ``(argument, context)``, whether or not it takes the context."""
    if not callable(function) or isinstance(function, type):
        raise ConfigurationError(f"@{role} decorates a function, got {function!r}")
    if inspect.iscoroutinefunction(function):
        raise ConfigurationError(
            f"@{role} got the coroutine function {function.__qualname__}: this release has no async "
            "pipeline yet, so sources, sinks and transformers are sync functions"
        )
    parameters = list(inspect.signature(function).parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_context = (
        any(p.kind is p.VAR_POSITIONAL for p in parameters)
        or len(positional) >= 2
        or any(p.name == "context" for p in parameters)
    )
    if takes_context:
        return function
    return lambda argument, context: function(argument)


def _types(types: tuple[Any, ...], role: str) -> frozenset[Any]:
    if not types or any(inspect.isfunction(t) for t in types):
        raise ConfigurationError(f"@{role} needs the types it handles first, as in @{role}(Weather)")
    return frozenset(types)


def _name(function: Function) -> str:
    return getattr(function, "__qualname__", None) or repr(function)


class _Wrapper:
    """What the function elements share: named after their function, and still callable as it."""

    _function: Function
    _name: str

    def _wrap(self, function: Function, name: str | None = None) -> None:
        self._function, self._name = function, name or _name(function)
        functools.update_wrapper(self, function)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return self._name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._function(*args, **kwargs)


class FunctionSource(_Wrapper, DataSource):
    """A DataSource of one type whose ``get`` (and ``get_many``) are plain functions.

    Calling it calls the ``get`` function. ``@weather.many`` adds ``get_many``.
    """

    def __init__(
        self,
        type: Any,
        get: Function | None = None,
        get_many: Function | None = None,
        *,
        name: str | None = None,
    ) -> None:
        if get is None and get_many is None:
            raise ConfigurationError("A FunctionSource needs a get or a get_many function")
        self.type = type
        self._get = None if get is None else _with_optional_context(get, "source")
        self._get_many = None if get_many is None else _with_optional_context(get_many, "source.many")
        self._wrap(get or get_many, name)  # type: ignore[arg-type]

    @property
    def provides(self) -> Any:
        return {self.type}

    def many(self, function: Function) -> FunctionSource:
        """Decorator: ``function(query, context=None)`` answers this source's ``get_many``."""
        self._get_many = _with_optional_context(function, "source.many")
        return self

    def _handler(self, type: Any, handler: Callable[[Any, Any], Any] | None, method: str) -> Any:
        if type is not self.type or handler is None:
            raise UnsupportedError(f"The source {self!r} has no {method} for {type_name(type)}")
        return handler

    def get(self, type: Any, query: Mapping[str, Any], context: Any = None) -> Any:
        return self._handler(type, self._get, "get")(query, context)

    def get_many(self, type: Any, query: Mapping[str, Any], context: Any = None) -> Iterable[Any]:
        return self._handler(type, self._get_many, "get_many")(query, context)  # type: ignore[no-any-return]


class FunctionSink(_Wrapper, DataSink):
    """A DataSink whose ``put`` (or ``put_many``) is a plain function; the other follows from it."""

    def __init__(
        self, types: Iterable[Any], put: Function | None = None, put_many: Function | None = None
    ) -> None:
        if put is None and put_many is None:
            raise ConfigurationError("A FunctionSink needs a put or a put_many function")
        self.types = frozenset(types)
        self._put = None if put is None else _with_optional_context(put, "sink")
        self._put_many = None if put_many is None else _with_optional_context(put_many, "sink.many")
        self._wrap(put or put_many)  # type: ignore[arg-type]

    @property
    def accepts(self) -> Any:
        return set(self.types)

    def _check(self, type: Any) -> None:
        if type not in self.types:
            raise UnsupportedError(f"The sink {self!r} does not accept {type_name(type)}")

    def put(self, type: Any, item: Any, context: Any = None) -> None:
        self._check(type)
        if self._put is None:
            self._put_many([item], context)  # type: ignore[misc]
        else:
            self._put(item, context)

    def put_many(self, type: Any, items: Iterable[Any], context: Any = None) -> None:
        self._check(type)
        if self._put_many is None:
            for item in items:
                self._put(item, context)  # type: ignore[misc]
        else:
            self._put_many(list(items), context)


class FunctionTransformer(_Wrapper, DataTransformer):
    """A DataTransformer of one conversion, ``from_type`` -> ``to_type``, done by a plain function."""

    def __init__(self, from_type: Any, to_type: Any, function: Function, cost: int = 1) -> None:
        self.from_type, self.to_type, self._cost = from_type, to_type, cost
        self._transform = _with_optional_context(function, "transformer")
        self._wrap(function)

    @property
    def transforms(self) -> Mapping[Any, Iterable[Any]]:
        return {self.from_type: {self.to_type}}

    @property
    def cost(self) -> int:
        return self._cost

    def transform(self, target_type: Any, value: Any, context: Any = None) -> Any:
        if target_type is not self.to_type or not isinstance(value, self.from_type):
            raise self.unsupported(target_type, value)
        return self._transform(value, context)


class _SourceDecorator:
    """``@source(Weather)`` for ``get``; ``@source.many(Weather)`` for ``get_many``."""

    def __call__(self, type: Any) -> Callable[[Function], FunctionSource]:
        (type,) = _types((type,), "source")
        return lambda function: FunctionSource(type, get=function)

    def many(self, type: Any) -> Callable[[Function], FunctionSource]:
        (type,) = _types((type,), "source.many")
        return lambda function: FunctionSource(type, get_many=function)


class _SinkDecorator:
    """``@sink(Weather, Forecast)`` for ``put``; ``@sink.many(...)`` for ``put_many``."""

    def __call__(self, *types: Any) -> Callable[[Function], FunctionSink]:
        accepted = _types(types, "sink")
        return lambda function: FunctionSink(accepted, put=function)

    def many(self, *types: Any) -> Callable[[Function], FunctionSink]:
        accepted = _types(types, "sink.many")
        return lambda function: FunctionSink(accepted, put_many=function)


class _TransformerDecorator:
    """``@transformer(Raw, Weather, cost=1)``: ``def parse(raw, context=None) -> Weather``."""

    def __call__(
        self, from_type: Any, to_type: Any, *, cost: int = 1
    ) -> Callable[[Function], FunctionTransformer]:
        _types((from_type, to_type), "transformer")
        return lambda function: FunctionTransformer(from_type, to_type, function, cost)


source = _SourceDecorator()
sink = _SinkDecorator()
transformer = _TransformerDecorator()


class CachedFunction:
    """A function whose calls go through a pipeline: see :func:`cached`."""

    def __init__(
        self, pipeline: Any, type: Any, function: Function, query: Callable[..., Mapping[str, Any]] | None
    ) -> None:
        if inspect.iscoroutinefunction(function):
            raise ConfigurationError(
                f"pipeline.cached got the coroutine function {function.__qualname__}: this release has "
                "no async pipeline yet, so only sync functions can be cached"
            )
        self.pipeline, self.type, self.function = pipeline, type, function
        self._signature = inspect.signature(function)
        self._query = query
        # The arguments of the call in progress, for the source to call the function with.
        self._arguments: contextvars.ContextVar[tuple[tuple[Any, ...], dict[str, Any]]] = (
            contextvars.ContextVar(f"datapipelines.cached:{_name(function)}")
        )
        self.source = FunctionSource(type, get=self._call, name=_name(function))
        functools.update_wrapper(self, function)
        pipeline._append_source(self.source)

    def __repr__(self) -> str:
        return f"<cached {_name(self.function)} of {type_name(self.type)}>"

    def query_for(self, *args: Any, **kwargs: Any) -> Mapping[str, Any]:
        """The query a call with these arguments is cached under."""
        if self._query is not None:
            return self._query(*args, **kwargs)
        bound = self._signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        query = self.query_for(*args, **kwargs)
        token = self._arguments.set((args, kwargs))
        try:
            return self.pipeline.get(self.type, query)
        finally:
            self._arguments.reset(token)

    def invalidate(self, *args: Any, **kwargs: Any) -> int:
        """Forget the cached result of a call with these arguments, in every tier."""
        return self.pipeline.invalidate(self.type, self.query_for(*args, **kwargs))  # type: ignore[no-any-return]

    def _call(self, query: Mapping[str, Any]) -> Any:
        arguments = self._arguments.get(None)
        if arguments is None:
            # Asked through pipeline.get directly: the query must be the function's own arguments.
            try:
                if not set(query) <= set(self._signature.parameters):
                    raise TypeError("the query names arguments the function does not take")
                bound = inspect.BoundArguments(self._signature, dict(query))  # type: ignore[arg-type]
                args, kwargs = bound.args, bound.kwargs
                self._signature.bind(*args, **kwargs)
            except TypeError:
                raise ConfigurationError(
                    f"{_name(self.function)} cannot be called with the query {dict(query)!r}; "
                    "call the cached function itself"
                ) from None
        else:
            args, kwargs = arguments
        return self.function(*args, **kwargs)


def cached(
    pipeline: Any, type: Any, query: Callable[..., Mapping[str, Any]] | None = None
) -> Callable[[Function], CachedFunction]:
    """Decorator: calls of the function become ``pipeline.get(type, query(*args, **kwargs))``.

    The function is added as the pipeline's last source for ``type``, so its
    results go through the tiers, policies, single-flight and stats like any
    other source's. ``query`` maps the call's arguments to the query (default:
    the arguments by parameter name, defaults filled in).
    ``wrapper.invalidate(*args, **kwargs)`` drops a result from every tier.
    Sync functions only: this release has no async pipeline yet. Decorate before
    other threads use the pipeline (at import time, say): adding a source plans
    every type again.
    """
    return lambda function: CachedFunction(pipeline, type, function, query)
