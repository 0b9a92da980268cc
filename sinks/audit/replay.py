"""Which recorded answer a recorder replays: the newest 2xx, optionally pinned and bounded in age."""

from __future__ import annotations

import datetime
import time
from typing import Any

from datapipelines.errors import ConfigurationError
from datapipelines.expiry import to_seconds

from .schema import replay_statement


def unix_time(value: Any, what: str) -> float | None:
    """``value`` (a datetime, an ISO 8601 str, or Unix seconds) as Unix seconds; None stays None.

    A datetime without a time zone is local time, as ``datetime.timestamp`` reads it.
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise ConfigurationError(f"{what} must be an ISO 8601 time, got {value!r}") from None
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise ConfigurationError(f"{what} must be a datetime, an ISO 8601 str or Unix seconds, got {value!r}")


class ReplayRule:
    """The replay rule of one recorder: pins (a session, a time) and the ttl of a recording.

    ``session_id`` limits replay to the answers recorded in that session; ``as_of``
    to those fetched at or before that time. A recording's age is measured from
    ``as_of``, else from the end of the pinned session, else from now, so a pinned
    replay sees the recordings as old as they were then. ``ttl`` (seconds or a
    timedelta; None: never) is how old a recording may be to be replayed at all.
    """

    def __init__(self, *, ttl: Any = None, as_of: Any = None, session_id: str | None = None,
                 session_end: float | None = None) -> None:  # fmt: skip
        self.ttl = to_seconds(ttl, "AuditRecorder ttl")
        self.as_of = unix_time(as_of, "AuditRecorder as_of")
        self.session_id = session_id
        self.reference = self.as_of if self.as_of is not None else session_end
        self.statement = replay_statement(session_id is not None, self.as_of is not None)

    @property
    def pinned(self) -> bool:
        return self.session_id is not None or self.as_of is not None

    def arguments(self, request_id: str) -> tuple[Any, ...]:
        """The arguments of ``statement`` for one request id."""
        pins = tuple(pin for pin in (self.session_id, self.as_of) if pin is not None)
        return (request_id, *pins)

    def age(self, fetched_at: float) -> float:
        """Seconds between the answer's arrival and the reference time (now, unless pinned)."""
        reference = time.time() if self.reference is None else self.reference
        return max(0.0, reference - fetched_at)

    def expired(self, age: float) -> bool:
        return self.ttl is not None and age >= self.ttl

    def describe(self) -> str:
        """The pins and ttl, as a miss message names them ("" when there are none)."""
        parts = []
        if self.session_id is not None:
            parts.append(f"in session {self.session_id[:12]}")
        if self.as_of is not None:
            parts.append(f"fetched by {datetime.datetime.fromtimestamp(self.as_of).isoformat()}")
        if self.ttl is not None:
            parts.append(f"younger than ttl {self.ttl:g}s")
        return " ".join(parts)
