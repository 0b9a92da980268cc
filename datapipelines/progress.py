"""A one-line progress bar on stderr, with no dependencies.

Long commands report ``(done, total)`` to :class:`Progress`; it redraws at
most every ``interval`` seconds and stays silent when the stream is not a
terminal, so logs and pipes never fill with carriage returns.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import TextIO

_WIDTH = 30


class Progress:
    """``with Progress("generate") as bar: work(progress=bar.update)``.

    ``update(done, total)`` sets the position; ``advance(n)`` moves it on.
    ``enabled`` defaults to whether ``stream`` (stderr) is a terminal.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self._stream = stream if stream is not None else sys.stderr
        self.enabled = _is_tty(self._stream) if enabled is None else enabled
        self._interval = interval
        self._clock = clock
        self._last_draw: float | None = None

    def update(self, done: int, total: int | None = None) -> None:
        self.done = done
        if total is not None:
            self.total = total
        self._maybe_draw()

    def advance(self, n: int = 1) -> None:
        self.update(self.done + n)

    def render(self) -> str:
        """The current line, without the carriage return."""
        if not self.total:
            return f"{self.label} {self.done}"
        fraction = min(self.done / self.total, 1.0)
        filled = int(fraction * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        return f"{self.label} [{bar}] {fraction:4.0%} {self.done}/{self.total}"

    def close(self) -> None:
        """Draw the final state and end the line."""
        if not self.enabled:
            return
        self._draw()
        self._stream.write("\n")
        self._stream.flush()

    def _maybe_draw(self) -> None:
        if not self.enabled:
            return
        now = self._clock()
        finished = self.total is not None and self.done >= self.total
        if finished or self._last_draw is None or now - self._last_draw >= self._interval:
            self._last_draw = now
            self._draw()

    def _draw(self) -> None:
        self._stream.write("\r" + self.render())
        self._stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
