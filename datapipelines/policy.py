"""Per-type resilience policy: freshness, stale serving, negative caching, jitter.

::

    pipeline = DataPipeline(tiers, policies={
        Weather: Policy(ttl=300, soft_ttl=60, max_stale=3600, negative_ttl=30, jitter=0.1),
    })

- ``ttl``: how long a value is fresh. Stores keep it ``ttl + max_stale`` so a
  stale copy is still there when the source fails.
- ``soft_ttl``: after this age a hit returns the cached value at once and
  refreshes it once in the background (stale-while-revalidate).
- ``max_stale``: when the source raises anything but NotFoundError, a value up
  to ``ttl + max_stale`` old is served instead, marked stale (fail-safe).
- ``negative_ttl``: a NotFoundError is remembered this long; the source is not
  asked again meanwhile.
- ``jitter``: each write's lifetime is shortened by a random fraction up to this,
  so keys written together do not expire together.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError
from .expiry import to_seconds


@dataclass(frozen=True)
class Policy:
    ttl: Any = None
    soft_ttl: Any = None
    max_stale: Any = None
    negative_ttl: Any = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name in ("ttl", "soft_ttl", "max_stale", "negative_ttl"):
            object.__setattr__(self, name, to_seconds(getattr(self, name), f"Policy.{name}"))
        if not 0.0 <= self.jitter < 1.0:
            raise ConfigurationError(f"Policy.jitter must be in [0, 1), got {self.jitter!r}")
        if self.soft_ttl is not None and self.ttl is not None and self.soft_ttl > self.ttl:
            raise ConfigurationError(f"Policy.soft_ttl ({self.soft_ttl}s) is longer than ttl ({self.ttl}s)")
        if self.max_stale is not None and self.ttl is None:
            raise ConfigurationError("Policy.max_stale needs a ttl: stale is measured from the end of ttl")

    @property
    def soft_limit(self) -> float:
        """Age after which a hit triggers a background refresh."""
        for limit in (self.soft_ttl, self.ttl):
            if limit is not None:
                return limit
        return float("inf")

    @property
    def fresh_limit(self) -> float:
        return float("inf") if self.ttl is None else self.ttl

    @property
    def stale_limit(self) -> float:
        return self.fresh_limit + (self.max_stale or 0.0)

    def lifetime(self, rng: random.Random | None = None) -> float | None:
        """Seconds a store keeps a value written now (None: forever), jitter applied."""
        if self.ttl is None:
            return None
        seconds = self.stale_limit
        if self.jitter:
            seconds *= 1.0 - self.jitter * (rng or random).random()
        return seconds
