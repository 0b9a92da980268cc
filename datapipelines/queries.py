"""The query DSL of 1.x: declare which keys a query must or may have.

::

    validator = Query.has("id").as_(int).or_("name").as_(str).also.can_have("region").with_default("EU")

    class Users(DataSource):
        @get.register(User)
        @validate_query(validator)
        def get_user(self, query, context=None): ...

A missing key raises MissingKeyError, a value of the wrong type
WrongValueTypeError, both QueryValidationError (a ValueError). A validator put
together wrongly raises QueryValidatorStructureError when it is built.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, MutableMapping
from enum import Enum
from functools import wraps
from typing import Any

from .context import PipelineContext


class QueryValidationError(ValueError):
    """A query does not match its validator."""


class MissingKeyError(QueryValidationError):
    pass


class WrongValueTypeError(QueryValidationError):
    pass


class BoundKeyExistenceError(QueryValidationError):
    pass


class QueryValidatorStructureError(AttributeError):
    """The validator itself is malformed (e.g. ``as_`` with no key selected)."""


def _runtime_type(type_: Any) -> Any:
    # typing generics such as List[int] check as their origin (list).
    return getattr(type_, "__origin__", type_)


class _Node:
    # A node that may evaluate to False (an optional key that is absent) rather than raise.
    falsifiable = False

    def evaluate(self, query: MutableMapping[str, Any], context: Any) -> bool:
        raise NotImplementedError


class _Default(_Node):
    def __init__(self, key: str, value: Any, supplies_type: Any) -> None:
        self.key, self.value, self.supplies_type = key, value, supplies_type

    def evaluate(self, query: MutableMapping[str, Any], context: Any) -> bool:
        if self.supplies_type is not None:
            query[self.key] = self.value(query, context)
        else:
            query[self.key] = copy.deepcopy(self.value)
        return True


class _Types(_Node):
    def __init__(self, key: str, types: Iterable[Any]) -> None:
        self.key = key
        self.types = list(types)
        self.default: _Default | None = None

    def __str__(self) -> str:
        return " or ".join(getattr(t, "__name__", repr(t)) for t in self.types)

    def evaluate(self, query: MutableMapping[str, Any], context: Any) -> bool:
        if self.key not in query:
            if self.default is not None:
                self.default.evaluate(query, context)
            return True
        value = query[self.key]
        for expected in map(_runtime_type, self.types):
            if isinstance(expected, type) and issubclass(expected, Enum) and isinstance(value, str):
                try:
                    value = expected(value)
                except ValueError:
                    continue
            if isinstance(value, expected):
                query[self.key] = value
                return True
        raise WrongValueTypeError(
            f"Query key {self.key!r} must be of type {self}; got {type(value).__name__} ({value!r})"
        )


class _Key(_Node):
    def __init__(self, key: str, required: bool) -> None:
        self.key, self.required = key, required
        self.child: _Types | None = None
        self.falsifiable = not required

    def __str__(self) -> str:
        return self.key

    def evaluate(self, query: MutableMapping[str, Any], context: Any) -> bool:
        present = self.key in query
        if self.required and not present:
            raise MissingKeyError(f"Query must contain key {self.key!r}; got keys {sorted(query)!r}")
        if self.child is not None:
            self.child.evaluate(query, context)
        return present


class _Group(_Node):
    joiner = ""

    def __init__(self, first: _Node) -> None:
        self.children: list[_Node] = [first]

    def __str__(self) -> str:
        return "(" + f" {self.joiner} ".join(str(c) for c in self.children) + ")"


class _And(_Group):
    joiner = "and"

    def evaluate(self, query: MutableMapping[str, Any], context: Any) -> bool:
        # can_have("x").and_("y"): all of them or none of them.
        results = [(child.evaluate(query, context), child.falsifiable) for child in self.children]
        if all(ok for ok, _ in results) or not any(ok for ok, falsifiable in results if falsifiable):
            return True
        raise BoundKeyExistenceError(f"Query must have all or none of {self}; got keys {sorted(query)!r}")


class _Or(_Group):
    joiner = "or"
    falsifiable = True

    def evaluate(self, query: MutableMapping[str, Any], context: Any) -> bool:
        # Every child is asked, so a wrong type or a half-given "and" anywhere is reported. As in
        # 1.x, an absent optional key counts as a failed alternative: can_have("x").or_("y").and_("z")
        # rejects {"z": ...}, since the "y and z" it half names is the alternative that failed.
        errors: list[QueryValidationError] = []
        passed = False
        for child in self.children:
            try:
                passed = child.evaluate(query, context) or passed
            except (MissingKeyError, BoundKeyExistenceError) as error:
                errors.append(error)
        if not passed and errors:
            raise type(errors[0])(
                f"Query must satisfy one of {self}; got keys {sorted(query)!r} ({errors[0]})"
            ) from errors[0]
        return passed


class QueryValidator:
    """A chain of key rules built with ``Query.has`` / ``Query.can_have``."""

    def __init__(self) -> None:
        self._roots: list[_Node] = []
        self._current: _Key | None = None
        self._group: _Group | None = None

    def __call__(self, query: MutableMapping[str, Any], context: PipelineContext | None = None) -> bool:
        for node in self._roots:
            node.evaluate(query, context)
        return True

    def _select(self, key: str, required: bool, verb: str) -> QueryValidator:
        if self._current is not None:
            raise QueryValidatorStructureError(f'A key is already selected; use "also" before "{verb}"')
        self._current = _Key(key, required)
        self._group = None
        self._roots.append(self._current)
        return self

    def has(self, key: str) -> QueryValidator:
        return self._select(key, True, "has")

    def can_have(self, key: str) -> QueryValidator:
        return self._select(key, False, "can_have")

    def _need_key(self, verb: str) -> _Key:
        if self._current is None:
            raise QueryValidatorStructureError(f'No key is selected; use "has" or "can_have" before "{verb}"')
        return self._current

    def as_(self, type: Any) -> QueryValidator:
        return self.as_any_of([type])

    def as_any_of(self, types: Iterable[Any]) -> QueryValidator:
        key = self._need_key("as_")
        if key.child is not None:
            raise QueryValidatorStructureError(f"Key {key.key!r} already has a type")
        types = list(types)
        for type_ in types:
            if not isinstance(_runtime_type(type_), type):
                raise QueryValidatorStructureError(
                    f"Key {key.key!r} can only be checked against types; got {type_!r}"
                )
        key.child = _Types(key.key, types)
        return self

    def _join(self, key: str, group_type: type[_Group], verb: str) -> QueryValidator:
        current = self._need_key(verb)
        if not isinstance(self._group, group_type):
            group = group_type(current)
            parent = self._group.children if self._group is not None else self._roots
            parent[parent.index(current)] = group
            self._group = group
        node = _Key(key, current.required)
        self._group.children.append(node)
        self._current = node
        return self

    def or_(self, key: str) -> QueryValidator:
        return self._join(key, _Or, "or_")

    def and_(self, key: str) -> QueryValidator:
        return self._join(key, _And, "and_")

    @property
    def also(self) -> QueryValidator:
        self._need_key("also")
        self._current = None
        self._group = None
        return self

    def with_default(self, value: Any, supplies_type: Any = None) -> QueryValidator:
        key = self._need_key("with_default")
        if key.required:
            raise QueryValidatorStructureError(
                f'Key {key.key!r} is required and cannot have a default; use "can_have"'
            )
        if key.child is None:
            self.as_(supplies_type if supplies_type is not None else type(value))
        assert key.child is not None
        key.child.default = _Default(key.key, value, supplies_type)
        return self


class Query(dict):  # type: ignore[type-arg]
    """A dict, plus the entry points of the validation DSL."""

    @staticmethod
    def has(key: str) -> QueryValidator:
        return QueryValidator().has(key)

    @staticmethod
    def can_have(key: str) -> QueryValidator:
        return QueryValidator().can_have(key)


def validate_query(
    validator: QueryValidator, *pre_transforms: Callable[[MutableMapping[str, Any]], Any]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a handler so its query is transformed, then validated, before it runs."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(method)
        def checked(self: Any, query: MutableMapping[str, Any], context: Any = None) -> Any:
            for transform in pre_transforms:
                transform(query)
            validator(query, context)
            return method(self, query, context)

        return checked

    return decorate
