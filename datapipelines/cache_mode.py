"""Cache modes of one ``get``, named as mxm-dataio names them.

``pipeline.get(T, q, cache_mode=CacheMode.NEVER)``; a mode's value (``"never"``)
or its spelling with hyphens (``"only-if-cached"``) works too. The older keywords
stay: ``refresh=True`` is BYPASS and ``only_cached=True`` is ONLY_IF_CACHED.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

from .errors import ConfigurationError


class CacheMode(str, Enum):
    """How one call uses the cache tiers (stores and replaying recorders) and the sources."""

    DEFAULT = "default"  # cache tiers first, then sources; the value is written back
    ONLY_IF_CACHED = "only_if_cached"  # cache tiers only, never a source (only_cached=True)
    BYPASS = "bypass"  # skip the cache tiers on the way in, fetch, write back (refresh=True)
    NEVER = "never"  # skip the cache tiers, fetch, write back and record nothing


class Flags(NamedTuple):
    """What a mode means to the miss path."""

    refresh: bool  # skip the cache tiers on the way in
    only_cached: bool  # never call a source
    write_back: bool  # write the value into the sinks (stores and recorders)


_FLAGS = {
    CacheMode.DEFAULT: Flags(False, False, True),
    CacheMode.ONLY_IF_CACHED: Flags(False, True, True),
    CacheMode.BYPASS: Flags(True, False, True),
    CacheMode.NEVER: Flags(True, False, False),
}


def mode_flags(cache_mode: Any, refresh: bool, only_cached: bool) -> Flags:
    """The flags of ``cache_mode``; ConfigurationError for an unknown mode or one that contradicts
    ``refresh`` / ``only_cached``."""
    try:
        mode = CacheMode(cache_mode.replace("-", "_") if isinstance(cache_mode, str) else cache_mode)
    except ValueError:
        known = ", ".join(repr(m.value) for m in CacheMode)
        raise ConfigurationError(f"Unknown cache_mode {cache_mode!r}; known modes: {known}") from None
    flags = _FLAGS[mode]
    if (refresh and not flags.refresh) or (only_cached and not flags.only_cached):
        given = "refresh=True" if refresh else "only_cached=True"
        raise ConfigurationError(f"cache_mode={mode.value!r} contradicts {given}; give one or the other")
    return flags
