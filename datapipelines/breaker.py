"""A circuit breaker per tier: skip a tier that keeps failing, probe it again later."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from .forks import reset_in_children

# What a guarded tier call returns when its breaker skipped it or it failed.
GUARD_FAILED: Any = object()


class CircuitBreaker:
    """Opens after ``failures`` consecutive errors; after ``cooldown`` seconds one
    probe is let through (half-open); its success closes the breaker again."""

    def __init__(self, failures: int = 3, cooldown: float = 5.0, clock: Callable[[], float] = time.monotonic):
        if failures < 1 or cooldown < 0:
            raise ValueError(
                f"CircuitBreaker needs failures >= 1 and cooldown >= 0, got {failures}, {cooldown}"
            )
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._consecutive = 0
        self._open_until: float | None = None
        self._probing = False
        # Read without the lock on the hit path: True from the first trip until a success.
        self.tripped = False
        reset_in_children(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread of the parent may have held it

    @property
    def state(self) -> str:
        until = self._open_until  # read once: a success on another thread may reset it to None
        if until is None:
            return "closed"
        return "half-open" if self._clock() >= until else "open"

    def allow(self) -> bool:
        """May a call go to the tier now?"""
        if self._open_until is None:
            return True
        with self._lock:
            if self._open_until is None:
                return True
            if self._clock() < self._open_until or self._probing:
                return False
            self._probing = True
            return True

    def success(self) -> None:
        if self._open_until is None and not self._consecutive:
            return
        with self._lock:
            self._consecutive = 0
            self._open_until = None
            self._probing = False
            self.tripped = False

    def failure(self) -> None:
        with self._lock:
            self._consecutive += 1
            if self._probing or self._consecutive >= self.failures:
                self._open_until = self._clock() + self.cooldown
                self.tripped = True
            self._probing = False


class NoBreaker:
    """Stands in where breakers are disabled: always lets calls through."""

    tripped = False
    state = "disabled"

    def allow(self) -> bool:
        return True

    def success(self) -> None:
        pass

    def failure(self) -> None:
        pass


NO_BREAKER = NoBreaker()
