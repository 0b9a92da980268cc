"""Per-type expiry, read the way Cassiopeia's stores read it.

``expirations={Weather: timedelta(minutes=5), "Match": 3600}`` maps a type (or
its name) to seconds or a timedelta. ``0`` means "do not store this type";
``-1`` or ``None`` means "never expires". Types not listed get the store-wide
``default``.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from .errors import ConfigurationError

# Sentinel results of Expirations.seconds_for().
NEVER: float | None = None
DONT_STORE = 0.0


def to_seconds(value: Any, what: str) -> float | None:
    """Normalise one expiry setting to seconds, None for never, 0.0 for don't store."""
    if value is None:
        return NEVER
    if isinstance(value, datetime.timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(
            f"Expiry for {what} must be seconds, a timedelta, 0, -1 or None; got {value!r}"
        )
    if value == -1:
        return NEVER
    if value < 0:
        raise ConfigurationError(f"Expiry for {what} is negative ({value!r}); use -1 or None for never")
    return float(value)


class Expirations:
    """Looks up the expiry of a type; resolved once per type, then a dict hit."""

    def __init__(self, expirations: Mapping[Any, Any] | None = None, default: Any = None) -> None:
        self.default = to_seconds(default, "the default")
        self._configured: dict[Any, float | None] = {}
        if expirations is not None and not isinstance(expirations, Mapping):
            raise ConfigurationError(
                f"Expirations must map types or type names to expiries, got {expirations!r}"
            )
        for key, value in (expirations or {}).items():
            if not isinstance(key, (type, str)):
                raise ConfigurationError(f"Expiration keys must be types or type names, got {key!r}")
            self._configured[key] = to_seconds(value, repr(key))
        self._resolved: dict[Any, float | None] = {}

    def seconds_for(self, type_: Any) -> float | None:
        """Seconds to keep ``type_``; None = never expires; 0.0 = do not store."""
        try:
            return self._resolved[type_]
        except KeyError:
            pass
        result = self.default
        for key in (type_, getattr(type_, "__qualname__", None), getattr(type_, "__name__", None)):
            if key is not None and key in self._configured:
                result = self._configured[key]
                break
        self._resolved[type_] = result
        return result
