"""JSON objects <-> dataclasses, for the dataclass types a transformer is built with.

Fields are matched by name; nested dataclasses, ``list[...]``, ``tuple[...]``,
``dict[str, ...]`` and ``Optional[...]`` are followed; keys the dataclass does
not declare are ignored (APIs add fields); a missing required field or a scalar
of the wrong type raises DataclassConversionError naming the path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

from datapipelines.context import PipelineContext
from datapipelines.data_transformer import DataTransformer
from datapipelines.errors import ConfigurationError, DataPipelinesError, UnsupportedError, type_name

from .raw import JSON

_SCALARS = (str, int, float, bool)


class DataclassConversionError(DataPipelinesError, ValueError):
    """A JSON document does not fit the dataclass it was converted to."""


def _union_args(hint: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return typing.get_args(hint)
    return None


def _convert(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return from_json(hint, value, path)
    options = _union_args(hint)
    if options is not None:
        if value is None and type(None) in options:
            return None
        for option in options:
            if isinstance(option, type) and dataclasses.is_dataclass(option) and isinstance(value, Mapping):
                return from_json(option, value, path)
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, set, frozenset) and args:
        _expect(value, list, hint, path)
        return origin(_convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
    if origin is tuple and args:
        _expect(value, list, hint, path)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
        pairs = enumerate(zip(args, value, strict=False))
        return tuple(_convert(a, item, f"{path}[{i}]") for i, (a, item) in pairs)
    if origin in (dict, Mapping) and len(args) == 2:
        _expect(value, dict, hint, path)
        return {key: _convert(args[1], item, f"{path}.{key}") for key, item in value.items()}
    if hint in _SCALARS:
        # JSON has one number type: an int is a valid float, a bool is not a number.
        fits = isinstance(value, hint) and not (hint is not bool and isinstance(value, bool))
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not fits:
            raise DataclassConversionError(
                f"{path} must be {hint.__name__}, got {type(value).__name__} {value!r}"
            )
    return value


def _expect(value: Any, kind: type, hint: Any, path: str) -> None:
    if not isinstance(value, kind):
        raise DataclassConversionError(
            f"{path} must be a JSON {'array' if kind is list else 'object'} for {hint}, "
            f"got {type(value).__name__} {value!r}"
        )


def from_json(cls: type, data: Any, path: str | None = None) -> Any:
    """An instance of dataclass ``cls`` built from the JSON object ``data``."""
    path = path or cls.__name__
    if not isinstance(data, Mapping):
        raise DataclassConversionError(
            f"{path} must be a JSON object for {type_name(cls)}, got {data!r:.200}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise DataclassConversionError(
                    f"{path} has no {field.name!r}, which {type_name(cls)} requires; keys: {sorted(data)}"
                )
            continue
        kwargs[field.name] = _convert(hints[field.name], data[field.name], f"{path}.{field.name}")
    return cls(**kwargs)


def _plain(value: Any) -> Any:
    # asdict keeps tuples and sets; a JSON document has only lists.
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(item) for item in value]
    return value


def to_json(value: Any) -> Any:
    """A dataclass instance as a JSON object: dicts, lists and scalars only."""
    return _plain(dataclasses.asdict(value))


class DataclassTransformer(DataTransformer):
    """JSON <-> each of the dataclass types it is built with: ``DataclassTransformer(Weather, Forecast)``."""

    def __init__(self, *dataclass_types: type, cost: int = 1) -> None:
        if not dataclass_types:
            raise ConfigurationError("DataclassTransformer needs at least one dataclass type")
        for cls in dataclass_types:
            if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
                raise ConfigurationError(f"DataclassTransformer takes dataclass types, got {cls!r}")
        self.types = frozenset(dataclass_types)
        self._cost = cost

    def __repr__(self) -> str:
        return f"DataclassTransformer({', '.join(sorted(t.__name__ for t in self.types))})"

    @property
    def cost(self) -> int:
        return self._cost

    @property
    def transforms(self) -> Mapping[Any, Any]:
        # dict is listed beside JSON so CompositeDataTransformer, which looks values up
        # by their class, finds the conversion too.
        result: dict[Any, set[Any]] = {JSON: set(self.types), dict: set(self.types)}
        for cls in self.types:
            result[cls] = {JSON}
        return result

    def transform(self, target_type: Any, value: Any, context: PipelineContext | None = None) -> Any:
        if target_type in self.types:
            return from_json(target_type, value)
        if target_type is JSON and type(value) in self.types:
            return to_json(value)
        raise UnsupportedError(
            f"{self!r} cannot transform {type_name(type(value))} to {type_name(target_type)}"
        )
