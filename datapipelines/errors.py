"""The exceptions every part of datapipelines raises.

They form one small hierarchy under :class:`DataPipelinesError`. The three 1.x
names keep their 1.x base: ``NotFoundError``, ``UnsupportedError`` and
``NoConversionError`` are still ``ValueError``s, so code written against 1.x
catches them as before.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def type_name(type_: Any) -> str:
    """A readable name for a type, or for anything passed where a type was expected."""
    return getattr(type_, "__qualname__", None) or getattr(type_, "__name__", None) or repr(type_)


def element_name(element: Any) -> str:
    """How errors and stats name a pipeline element: its repr, or its class name if that is the default."""
    if type(element).__repr__ is object.__repr__:
        return type(element).__name__
    return repr(element)


class DataPipelinesError(Exception):
    """Base class of every error raised by datapipelines."""


class NotFoundError(DataPipelinesError, ValueError):
    """Nothing could answer a query.

    A source handler raises it (with any message) to say "not here"; the pipeline
    raises it with ``type``, ``query`` and ``tried`` filled in when every source
    said so.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        type: Any = None,
        query: Any = None,
        tried: Iterable[str] = (),
    ) -> None:
        self.type = type
        self.query = query
        self.tried = tuple(tried)
        if message is None:
            message = f"No {type_name(type)} found for query {query!r}"
            if self.tried:
                message += f" (tried: {', '.join(self.tried)})"
        super().__init__(message)


class DamagedEntryError(NotFoundError):
    """A stored entry failed its integrity check: never served, a miss, counted as ``damaged`` in stats."""


class NoConversionError(DataPipelinesError, ValueError):
    """No source provides a type, not even through a chain of transformers."""


class UnsupportedError(DataPipelinesError, ValueError):
    """A source, sink or transformer was called with a type it never registered."""


class ConfigurationError(DataPipelinesError, ValueError):
    """A pipeline, store or policy was given settings that cannot work."""


class QueryKeyError(DataPipelinesError, TypeError, ValueError):
    """A query has no key: a value of an unsupported type, a str that is not valid Unicode,
    or nesting deeper than keys go; the message names the path in the query.

    Both a TypeError and a ValueError, so either ``except`` catches it; as a
    caller's mistake it is never counted against a tier.
    """


class DatabaseError(DataPipelinesError):
    """A database could not be reached or read (an unreachable server, a file that is not a
    database); the message names the URL or file, never its password."""


# Mistakes in how a tier is used, not failures of the tier: a pipeline never swallows them.
CALLER_ERRORS = (ConfigurationError, UnsupportedError, TypeError)
