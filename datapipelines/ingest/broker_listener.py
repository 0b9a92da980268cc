"""BrokerListener: what the MQTT and AMQP listeners share: a thread, reconnects, counters, the file rule.

A subclass connects and consumes in :meth:`BrokerListener.serve` until asked to
stop, handing each message to :meth:`take`, and acknowledges it only when
``take`` returns: by then its file is in the incoming folder for good.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .message_files import MessageFiles, exit_if_asked
from .stats import Counters

LOGGER = logging.getLogger(__name__)


class BrokerListener:
    """Write the messages of a broker into the ``incoming`` folder a DirectoryListener watches.

    ``name`` (a template with ``{id}``), ``remember`` and ``state``: see
    :class:`MessageFiles`. Give it to ``Ingest(..., brokers=[...])`` or run it
    alone with :meth:`start` / :meth:`stop` (or ``with``).
    """

    kind = "broker"

    def __init__(
        self,
        incoming: str | os.PathLike[str],
        *,
        name: str = "{id}",
        remember: float = 7 * 86400.0,
        state: str | os.PathLike[str] | None = None,
        label: str | None = None,
        reconnect_delay: float = 1.0,
    ) -> None:
        self.files = MessageFiles(incoming, name=name, state=state, remember=remember)
        self.label = label or self.kind
        self.reconnect_delay = reconnect_delay
        self.counters = Counters("received", "written", "duplicates", "errors", "connections")
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.files.incoming!r}, label={self.label!r})"

    # -- lifetime ---------------------------------------------------------------------------
    def start(self, pipeline: Any = None, *, wait: float = 10.0) -> BrokerListener:
        """Connect and consume in a background thread; wait up to ``wait`` s for the first connection.
        ``pipeline`` is unused: the folder's DirectoryListener puts the files into the pipeline."""
        self.files.prune()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"ingest-{self.label}", daemon=True)
        self._thread.start()
        if not self._connected.wait(wait):
            LOGGER.warning("%r: not connected after %s s; retrying in the background", self, wait)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop consuming; a message in hand is finished and acknowledged first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> BrokerListener:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def idle(self) -> bool:
        """A broker may always send more: idle means only that no message is being written now."""
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.serve(self._stop, self._on_connected)
            except Exception as error:  # a broker restarting or unreachable: connect again
                self.counters.add("errors")
                LOGGER.warning("%r: %s; reconnecting in %s s", self, error, self.reconnect_delay)
            self._connected.clear()
            self._stop.wait(self.reconnect_delay)

    def _on_connected(self) -> None:
        self.counters.add("connections")
        self._connected.set()

    # -- for subclasses ---------------------------------------------------------------------
    def serve(self, stop: threading.Event, connected: Callable[[], None]) -> None:
        """Connect, call ``connected()``, consume until ``stop`` is set (looking at it at least every
        0.2 s), then disconnect. Raising means: connect again after ``reconnect_delay``; the message
        in hand, unacknowledged, comes back from the broker."""
        raise NotImplementedError

    def take(self, message_id: str, payload: bytes, source: str) -> None:
        """Deliver one message into the folder; returns once it may be acknowledged."""
        self.counters.add("received")
        if self.files.write(message_id, payload, source):
            self.counters.add("written")
        else:
            self.counters.add("duplicates")
            LOGGER.info("%r: message %s was delivered before; acknowledged again", self, message_id)
        exit_if_asked()
        self.files.prune_now_and_then()

    def report(self) -> dict[str, Any]:
        report = self.counters.snapshot()
        report["connected"] = self._connected.is_set()
        return report
