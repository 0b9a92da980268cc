"""The one fake clock of the suite: it moves only when told.

``FakeClock()`` reads like ``time.time()`` (seconds, starting now: shared tiers compare
deadlines across processes); ``FakeClock(datetime(...))`` reads like an aware
``datetime.now(timezone.utc)``, as the catalogue and the inventory take it.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any


class FakeClock:
    """``clock()`` reads it, ``clock.advance(seconds)`` moves it."""

    def __init__(self, start: float | datetime | None = None) -> None:
        self.now: Any = time.time() if start is None else start

    def __call__(self) -> Any:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds) if isinstance(self.now, datetime) else seconds
