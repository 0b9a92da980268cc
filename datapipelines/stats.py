"""Counters and latency samples per tier and per source, for ``pipeline.stats()``.

Counting stays off the formatting path: a hit adds one integer. Latency is
sampled (every call on the slow path, one in 64 hits on the fast path) into a
bounded window, so the percentiles cost nothing until they are read.
"""

from __future__ import annotations

from collections import deque
from typing import Any

SAMPLE_EVERY = 64
_WINDOW = 2048


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))
    return ordered[index]


class ElementStats:
    """What one pipeline element did.

    For a tier: ``lookups`` (hits are lookups - misses - lookup errors - lookup
    skips, so the fast path adds one integer), ``misses``, ``puts``, and errors
    and skips (calls skipped while its breaker was open), each kept apart for
    lookups and writes. For a source: ``calls``, errors, ``joins`` (callers that
    shared another's single-flight call), ``stale`` (stale values served because
    it failed), ``negative`` (misses answered from the negative cache), ``damaged``
    (lookups that found an entry failing its integrity check: a miss, fetched again).
    """

    __slots__ = (
        "name",
        "lookups",
        "misses",
        "puts",
        "lookup_errors",
        "put_errors",
        "lookup_skips",
        "put_skips",
        "calls",
        "joins",
        "stale",
        "negative",
        "damaged",
        "sampled",
        "_latencies",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.lookups = self.misses = self.puts = 0
        self.lookup_errors = self.put_errors = self.lookup_skips = self.put_skips = 0
        self.calls = self.joins = self.stale = self.negative = self.damaged = 0
        # Latency samples ever recorded, so a metrics bridge can tell which ones it has not seen.
        self.sampled = 0
        self._latencies: deque[float] = deque(maxlen=_WINDOW)

    def record_latency(self, seconds: float) -> None:
        self._latencies.append(seconds)
        self.sampled += 1

    @classmethod
    def combined(cls, parts: list[ElementStats]) -> ElementStats:
        """One ElementStats adding up ``parts`` (an element's counters kept per type)."""
        total = cls(parts[0].name)
        for field in cls.__slots__:
            if field not in ("name", "_latencies"):
                setattr(total, field, sum(getattr(part, field) for part in parts))
        for part in parts:
            total._latencies.extend(part._latencies)
        return total

    def latencies_since(self, mark: int) -> tuple[int, list[float]]:
        """``(new mark, the samples recorded after mark that the window still holds)``.

        A mark from before ``reset`` counts from zero again.
        """
        window, sampled = list(self._latencies), self.sampled
        new = sampled - mark if mark <= sampled else sampled
        return sampled, window[len(window) - min(new, len(window)) :]

    def snapshot(self) -> dict[str, Any]:
        ordered = sorted(self._latencies)
        hits = max(0, self.lookups - self.misses - self.lookup_errors - self.lookup_skips)

        def micro(fraction: float) -> float | None:
            value = _percentile(ordered, fraction)
            return None if value is None else round(value * 1e6, 2)

        return {
            "hits": hits,
            "misses": self.misses,
            "puts": self.puts,
            "errors": self.lookup_errors + self.put_errors,
            "skips": self.lookup_skips + self.put_skips,
            "calls": self.calls,
            "joins": self.joins,
            "stale": self.stale,
            "negative": self.negative,
            "damaged": self.damaged,
            "p50_us": micro(0.5),
            "p99_us": micro(0.99),
        }
