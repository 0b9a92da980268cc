"""The per-call context handed to every source, sink and transformer, and the current session."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any


class _TypeWildcard:
    """Stands for "every type" in ``provides``, ``accepts`` and ``transforms``.

    It is its own container: ``x in TYPE_WILDCARD`` is true for any ``x``, so both
    1.x idioms, ``provides is TYPE_WILDCARD`` and ``TYPE_WILDCARD in provides``,
    keep working.
    """

    _instance: _TypeWildcard | None = None

    def __new__(cls) -> _TypeWildcard:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __contains__(self, item: Any) -> bool:
        return True

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(())

    def __repr__(self) -> str:
        return "TYPE_WILDCARD"

    def __reduce__(self) -> str:
        return "TYPE_WILDCARD"


TYPE_WILDCARD: Any = _TypeWildcard()


class PipelineContext(dict):  # type: ignore[type-arg]
    """A plain dict that travels with one pipeline call.

    ``context[PipelineContext.Keys.PIPELINE]`` is the pipeline and
    ``context[PipelineContext.Keys.QUERY]`` the query the caller passed, so a
    store can key a written-back value by the query that produced it.
    """

    class Keys:
        PIPELINE = "pipeline"
        # 1.x's key for an expiry a caller may put in the context; no built-in part reads it.
        EXPIRATION = "expires"
        QUERY = "query"
        # Set on get_many calls: the query names many items, not one.
        MANY = "many"
        # Set on put_many calls that were given one query per item.
        QUERIES = "queries"
        # Set during write-back: the name of the source that produced the value.
        SOURCE = "source"
        # Set during write-back under a Policy: {type: seconds} overriding store expiry.
        EXPIRY = "expiry"
        # Set (True) under CacheMode.NEVER: nothing is written back or recorded, errors included.
        NO_WRITE_BACK = "no_write_back"


_session: contextvars.ContextVar[str | None] = contextvars.ContextVar("datapipelines_session", default=None)


def current_session() -> str | None:
    """The id of the session opened by ``pipeline.session(...)`` in this context, or None."""
    return _session.get()


@contextlib.contextmanager
def in_session(session_id: str) -> Iterator[str]:
    """Make ``session_id`` the current session inside the block."""
    token = _session.set(session_id)
    try:
        yield session_id
    finally:
        _session.reset(token)
