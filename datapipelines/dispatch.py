"""Type dispatch for ``get``/``get_many``/``put``/``put_many`` methods.

``@DataSource.dispatch`` and ``@DataSink.dispatch`` both use :func:`type_dispatch`:
the decorated method becomes a dispatcher on its ``type`` argument, handlers are
added with ``@method.register(SomeType)`` and take ``(self, arg, context=None)``.
When neither method of the pair (``get``/``get_many`` or ``put``/``put_many``)
has handlers, the decorated body is called, which makes the element a wildcard;
otherwise an unregistered type raises UnsupportedError, even on the method of the
pair that has no handlers of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import update_wrapper
from typing import Any

from .errors import UnsupportedError, type_name

Handler = Callable[..., Any]

# The methods whose handlers, together, make an element typed rather than a wildcard.
_PAIRS = {"DataSource": ("get", "get_many"), "DataSink": ("put", "put_many")}


def type_dispatch(method: Handler, role: str) -> Any:
    handlers: dict[Any, Handler] = {}
    # Subclasses of a registered type resolve through the MRO once, then hit here.
    resolved: dict[Any, Handler] = {}
    # Per element class: True when no method of its pair has handlers (a wildcard).
    wildcard: dict[type, bool] = {}

    def resolve(type_: Any) -> Handler:
        for base in getattr(type_, "__mro__", (type_,)):
            if base in handlers:
                handler = resolved[type_] = handlers[base]
                return handler
        raise UnsupportedError(
            f"{role} {method.__qualname__} does not support type {type_name(type_)}; "
            f"registered: {', '.join(sorted(type_name(t) for t in handlers)) or 'none'}"
        )

    def dispatcher(self: Any, type_: Any, arg: Any, context: Any = None) -> Any:
        handler = resolved.get(type_)
        if handler is None:
            if not handlers:
                cls = type(self)
                if cls not in wildcard:
                    wildcard[cls] = registered_types(cls, *_PAIRS.get(role, ())) is None
                if wildcard[cls]:
                    return method(self, type_, arg, context)
            handler = resolve(type_)
        return handler(self, arg, context)

    def register(type_: Any) -> Callable[[Handler], Handler]:
        def add(handler: Handler) -> Handler:
            handlers[type_] = handler
            resolved.clear()
            return handler

        return add

    update_wrapper(dispatcher, method)
    dispatcher.register = register  # type: ignore[attr-defined]
    dispatcher.registered_types = handlers.keys()  # type: ignore[attr-defined]
    return dispatcher


def registered_types(cls: type, *method_names: str) -> set[Any] | None:
    """The types registered on the named dispatchers of ``cls``; None when none are."""
    types: set[Any] = set()
    for name in method_names:
        types.update(getattr(getattr(cls, name, None), "registered_types", ()))
    return types or None
