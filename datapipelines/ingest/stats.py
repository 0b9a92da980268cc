"""Counters, gauges and step durations of the ingest, for ``pipeline.stats()["ingest"]``."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from ..stats import _percentile

_WINDOW = 2048


class Counters:
    """Named counters that only grow, safe to bump from several threads, plus a duration window."""

    def __init__(self, *names: str) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = dict.fromkeys(names, 0)
        self._by_target: dict[str, int] = {}
        self._durations: deque[float] = deque(maxlen=_WINDOW)

    def add(self, name: str, count: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + count

    def routed(self, target: str) -> None:
        with self._lock:
            self._by_target[target] = self._by_target.get(target, 0) + 1

    def duration(self, seconds: float) -> None:
        self._durations.append(seconds)

    def __getitem__(self, name: str) -> int:
        return self._values.get(name, 0)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            report: dict[str, Any] = dict(self._values)
            if self._by_target or "no_match" in self._values:
                report["routed"] = dict(self._by_target)
        if self._durations or "processed" in report:
            ordered = sorted(self._durations)
            for label, fraction in (("p50_ms", 0.5), ("p99_ms", 0.99)):
                value = _percentile(ordered, fraction)
                report[label] = None if value is None else round(value * 1000, 3)
        return report


class Tracker:
    """The files of one work folder that are claimed and not yet done with: the in-flight gauge."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, float] = {}  # uid -> monotonic claim time, oldest first

    def claimed(self, uid: str) -> None:
        with self._lock:
            self._pending.setdefault(uid, time.monotonic())

    def finished(self, uid: str) -> None:
        with self._lock:
            self._pending.pop(uid, None)

    def release_all(self) -> None:
        """Forget every file: on stop, what is left in the work folder is the next start's to take up."""
        with self._lock:
            self._pending.clear()

    def holds(self, uid: str) -> bool:
        return uid in self._pending

    def __len__(self) -> int:
        return len(self._pending)

    def oldest_age(self) -> float | None:
        with self._lock:
            first = next(iter(self._pending.values()), None)
        return None if first is None else round(time.monotonic() - first, 3)


_TRACKERS: dict[str, Tracker] = {}
_TRACKERS_LOCK = threading.Lock()


def tracker_for(work: str) -> Tracker:
    """The one tracker of the work folder ``work`` in this process."""
    tracker = _TRACKERS.get(work)
    if tracker is None:
        with _TRACKERS_LOCK:
            tracker = _TRACKERS.setdefault(work, Tracker())
    return tracker
