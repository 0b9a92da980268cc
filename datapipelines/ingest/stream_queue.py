"""The seam between a distributed step and the engine that carries its work: a stream of entries.

:class:`StreamQueue` is what a step running on many machines needs from a
broker: bounded publishing, leased reads with delivery counts, acknowledgement
after the effects, delayed retries, dead letters and a status. Redis Streams
(:class:`~datapipelines.ingest.redis_queue.RedisStreamQueue`) implements it;
:func:`open_stream_queue` picks the engine from the URL's scheme.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from ..extras import MissingExtraError, reraise_naming_extra
from .redis_queue import Entry

SCHEMES = ("redis", "rediss", "nats")


class StreamQueue(Protocol):
    """One step's stream as seen by one consumer (see docs/ingest.md, "Across machines")."""

    step: str
    consumer: str
    max_deliveries: int

    def start(self) -> None:
        """Create what is missing (stream, group); safe to call again, e.g. after the server lost it."""
        ...

    def publish(self, payload: str, timeout: float = 10.0) -> str:
        """Append one entry; wait while the stream is full, then raise QueueFullError."""
        ...

    def publish_many(self, payloads: Sequence[str], timeout: float = 10.0) -> list[str]:
        """Append several entries in one round trip where the engine allows; their ids."""
        ...

    def publish_later(self, payload: str, delay: float) -> None:
        """Deliver ``payload`` as a new entry in ``delay`` seconds (on the server's clock)."""
        ...

    def read(self, count: int = 100, block: float = 1.0) -> tuple[list[Entry], list[Entry]]:
        """(entries to process, entries just dead-lettered after ``max_deliveries``)."""
        ...

    def ack(self, *ids: str) -> None:
        """The effects of these entries are complete."""
        ...

    def renew(self, *ids: str) -> None:
        """Still working on these: restart their lease without counting a delivery."""
        ...

    def hand_back(self, *ids: str) -> None:
        """Give these up now (a graceful stop) so that another consumer takes them at once."""
        ...

    def retry_later(self, entry: Entry, delay: float, payload: str | None = None) -> None:
        """Settle ``entry`` and deliver ``payload`` (default: the same) again in ``delay`` seconds."""
        ...

    def release_due(self, limit: int = 1000) -> int:
        """Move delayed entries that are due into the stream; how many."""
        ...

    def waiting(self) -> list[str]:
        """The payload of every entry not yet settled: unread, in a consumer's hands, or delayed."""
        ...

    def outstanding(self) -> int:
        """How many entries are unread or unacknowledged (delayed ones not counted)."""
        ...

    def status(self) -> dict[str, Any]:
        """outstanding, pending, delayed, oldest_age_s, dead and consumers (name, pending, idle_s)."""
        ...

    def dead_letters(self, count: int = 100) -> list[Mapping[str, str]]:
        """Dead-lettered entries, oldest first: payload, id, step, deliveries and dead_id."""
        ...

    def drop_dead(self, *dead_ids: str) -> int:
        """Forget these dead letters; how many were there."""
        ...

    def delete(self) -> None:
        """Remove the stream and everything kept for it (delayed entries, dead letters)."""
        ...

    def close(self) -> None:
        """Let the connection go."""
        ...


def open_stream_queue(url: str, step: str, **options: Any) -> StreamQueue:
    """The stream queue of ``step`` on the engine ``url`` names: ``redis://`` or ``rediss://`` (Redis
    Streams), ``nats://`` (NATS JetStream, the ``nats`` extra). ``options`` are the engines' shared
    keywords: prefix, consumer, max_length, lease, max_deliveries."""
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        from .redis_queue import RedisStreamQueue

        return RedisStreamQueue.from_url(url, step, **options)
    if scheme == "nats":
        return _nats_engine().from_url(url, step, **options)  # type: ignore[no-any-return]
    known = ", ".join(f"{name}://" for name in SCHEMES)
    raise ConfigurationError(f"stream queue URL {url!r}: unknown scheme {scheme!r}; use one of {known}")


def _nats_engine() -> Any:
    try:
        module = importlib.import_module(f"{__package__}.nats_queue")
    except ImportError as error:
        if error.name == f"{__package__}.nats_queue":
            raise MissingExtraError(
                "the NATS JetStream engine (nats://) is not part of this installation of datapipelines",
                name=error.name,
            ) from error
        reraise_naming_extra("The NATS JetStream engine (nats://)", error)
    return module.NatsStreamQueue
