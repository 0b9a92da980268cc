"""DataTransformer: converts a value of one type into another."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from functools import update_wrapper
from typing import Any

from multipledispatch import Dispatcher

from .context import PipelineContext
from .errors import UnsupportedError, type_name


class DataTransformer(ABC):
    """Converts values between types.

    Subclasses decorate ``transform`` with ``@DataTransformer.dispatch`` and
    register conversions with ``@transform.register(FromType, ToType)``; each
    handler takes ``(self, value, context=None)``. ``cost`` (default 1) weighs
    this transformer when the pipeline picks the cheapest chain.
    """

    @staticmethod
    def unsupported(target_type: Any, value: Any) -> UnsupportedError:
        return UnsupportedError(
            f"The conversion from {type_name(type(value))} to {type_name(target_type)} "
            "is not supported by this DataTransformer"
        )

    @staticmethod
    def dispatch(method: Callable[..., Any]) -> Any:
        dispatcher = Dispatcher(method.__name__)
        transforms: dict[Any, set[Any]] = {}
        # Dispatch matches a subclass of a registered target too; only exact targets are served.
        targets: set[Any] = set()

        def wrapper(self: Any, target_type: Any, value: Any, context: Any = None) -> Any:
            handler = dispatcher.dispatch(type(value), target_type) if target_type in targets else None
            if handler is None:
                raise DataTransformer.unsupported(target_type, value)
            return handler(self, value, context)

        def register(from_type: Any, to_type: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
            def add(handler: Callable[..., Any]) -> Callable[..., Any]:
                transforms.setdefault(from_type, set()).add(to_type)
                targets.add(to_type)
                dispatcher.add((from_type, to_type), handler)
                return handler

            return add

        update_wrapper(wrapper, method)
        wrapper.register = register  # type: ignore[attr-defined]
        wrapper.registered_transforms = transforms  # type: ignore[attr-defined]
        return wrapper

    @property
    def transforms(self) -> Mapping[Any, Iterable[Any]]:
        """Each from-type mapped to the set of types it can be converted to."""
        registered = getattr(type(self).transform, "registered_transforms", {})
        return {source: set(targets) for source, targets in registered.items()}

    @property
    def cost(self) -> int:
        return 1

    @abstractmethod
    def transform(self, target_type: Any, value: Any, context: PipelineContext | None = None) -> Any:
        """Return ``value`` converted to ``target_type``."""


class CompositeDataTransformer(DataTransformer):
    """Several transformers behind one; each conversion uses the cheapest that offers it."""

    def __init__(self, transformers: Iterable[DataTransformer]) -> None:
        self._transformers = list(transformers)
        self._best: dict[tuple[Any, Any], DataTransformer] = {}
        for transformer in self._transformers:
            for from_type, to_types in transformer.transforms.items():
                for to_type in to_types:
                    current = self._best.get((from_type, to_type))
                    if current is None or transformer.cost < current.cost:
                        self._best[(from_type, to_type)] = transformer

    @property
    def transformers(self) -> list[DataTransformer]:
        return list(self._transformers)

    @property
    def transforms(self) -> Mapping[Any, Iterable[Any]]:
        result: dict[Any, set[Any]] = {}
        for from_type, to_type in self._best:
            result.setdefault(from_type, set()).add(to_type)
        return result

    @property
    def cost(self) -> int:
        return min((t.cost for t in self._transformers), default=1)

    def transform(self, target_type: Any, value: Any, context: PipelineContext | None = None) -> Any:
        for base in type(value).__mro__:
            transformer = self._best.get((base, target_type))
            if transformer is not None:
                return transformer.transform(target_type, value, context)
        raise UnsupportedError(
            f"No transformer converts {type_name(type(value))} to {type_name(target_type)}"
        )
