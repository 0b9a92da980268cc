"""A step's work queue across machines: one Redis stream and consumer group per step.

Entries are acknowledged only once the step's effects are complete, so a worker
that dies leaves its entries in the group's pending list, where another worker
claims them once their lease has run out (``XAUTOCLAIM``). Redis 7.0 has no
dead-letter support, no negative acknowledgement and no delayed delivery, so
they are built here from delivery counts (``XPENDING``), a dead-letter stream
and a sorted set moved into the stream by a small Lua script. The stream is
bounded: publishing waits while ``max_length`` entries are outstanding, and an
acknowledged entry is deleted at once, so nothing unacknowledged is ever trimmed.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from ..errors import ConfigurationError, DataPipelinesError

LOGGER = logging.getLogger(__name__)

DEFAULT_PREFIX = "datapipelines:ingest"

# XADD only while fewer than ARGV[1] entries are outstanding (unread or pending): back-pressure, never
# MAXLEN, which would drop entries nobody has acknowledged.
_ADD_BOUNDED = """
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return false end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
"""

# Park an entry in the delay set until ARGV[3] ms from now (server clock), and settle its delivery.
_DELAY = """
local now = redis.call('TIME')
local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], due, ARGV[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[4])
redis.call('XDEL', KEYS[1], ARGV[4])
return due
"""

# Park a new entry in the delay set until ARGV[2] ms from now (server clock).
_PUBLISH_LATER = """
local now = redis.call('TIME')
local due = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) + tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], due, ARGV[1])
return due
"""

# Move up to ARGV[1] delayed entries that are due into the stream, each once (ZREM in the same script).
_RELEASE_DUE = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now_ms, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
    redis.call('XADD', KEYS[1], '*', 'payload', member)
    redis.call('ZREM', KEYS[2], member)
end
return #due
"""


class QueueFullError(DataPipelinesError):
    """The step's stream stayed full (``max_length`` outstanding entries) for the whole wait."""


@dataclass(frozen=True)
class Entry:
    """One piece of work: its stream id, its payload, and how often it has been delivered."""

    id: str
    payload: str
    deliveries: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _lost_group(error: redis.ResponseError) -> bool:
    """The server no longer has the group (a restart without persistence, FLUSHALL)."""
    return str(error).startswith("NOGROUP")


def _payload(fields: Mapping[Any, Any]) -> str:
    """The payload field, whether or not the client decodes responses."""
    return _text(fields.get(b"payload", fields.get("payload", "")))


def check_limits(engine: str, step: str, max_length: int, lease: float, max_deliveries: int) -> None:
    """Refuse limits no stream engine can honour, naming the engine and the step."""
    if max_length < 1 or lease <= 0 or max_deliveries < 1:
        raise ConfigurationError(
            f"{engine} {step!r}: max_length and max_deliveries must be >= 1 and lease > 0, "
            f"got {max_length}, {max_deliveries}, {lease}"
        )


class RedisStreamQueue:
    """The stream ``<prefix>:<step>`` with consumer group ``<step>``, seen by one consumer.

    ``lease`` seconds without an acknowledgement or a :meth:`renew` and an entry
    may be claimed by another consumer; an entry delivered more than
    ``max_deliveries`` times goes to the dead-letter stream ``<prefix>:<step>:dead``
    with its delivery count, even when its consumer died on it every time.
    """

    def __init__(
        self,
        client: redis.Redis,
        step: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        consumer: str | None = None,
        max_length: int = 10_000,
        lease: float = 30.0,
        max_deliveries: int = 5,
    ) -> None:
        check_limits(type(self).__name__, step, max_length, lease, max_deliveries)
        self.client = client
        self.step = step
        self.stream = f"{prefix}:{step}"
        self.dead_stream = f"{self.stream}:dead"
        self.delayed = f"{self.stream}:delayed"
        self.group = step
        self.consumer = consumer or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.max_length = max_length
        self.lease_ms = int(lease * 1000)
        self.max_deliveries = max_deliveries
        self._add_bounded = client.register_script(_ADD_BOUNDED)
        self._delay = client.register_script(_DELAY)
        self._release_due = client.register_script(_RELEASE_DUE)
        self._publish_later = client.register_script(_PUBLISH_LATER)

    @classmethod
    def from_url(cls, url: str, step: str, **options: Any) -> RedisStreamQueue:
        """The queue of ``step`` on the Redis at ``url`` (``redis://`` or ``rediss://``)."""
        return cls(redis.Redis.from_url(url), step, **options)

    def close(self) -> None:
        self.client.close()

    def delete(self) -> None:
        """Remove the stream, its group, its delay set and its dead letters from the server."""
        self.client.delete(self.stream, self.delayed, self.dead_stream)

    def start(self) -> None:
        """Create the stream and group if missing; warn when the server may evict them."""
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
        warn_if_evictable(self.client)

    # -- producing ------------------------------------------------------------------------
    def publish(self, payload: str, timeout: float = 10.0) -> str:
        """Append ``payload``; while the stream is full, wait up to ``timeout`` s, then raise."""
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            added = self._add_bounded(keys=[self.stream], args=[self.max_length, "payload", payload])
            if added is not None:
                return _text(added)
            if time.monotonic() >= deadline:
                raise QueueFullError(
                    f"stream {self.stream!r} still holds {self.max_length} unacknowledged entries "
                    f"after {timeout} s; its workers are not keeping up"
                )
            time.sleep(pause)
            pause = min(0.2, pause * 2)

    def publish_many(self, payloads: Sequence[str], timeout: float = 10.0) -> list[str]:
        """Append every payload, one round trip for all while the stream has room; their ids."""
        ids: list[str | None] = [None] * len(payloads)
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            waiting = [index for index, known in enumerate(ids) if known is None]
            if not waiting:
                return [str(known) for known in ids]
            with self.client.pipeline(transaction=False) as pipe:
                for index in waiting:
                    self._add_bounded(
                        keys=[self.stream], args=[self.max_length, "payload", payloads[index]], client=pipe
                    )
                added = pipe.execute()
            for index, entry_id in zip(waiting, added, strict=True):
                ids[index] = None if entry_id is None else _text(entry_id)
            if all(known is not None for known in ids):
                continue
            if time.monotonic() >= deadline:
                raise QueueFullError(
                    f"stream {self.stream!r} still holds {self.max_length} unacknowledged entries "
                    f"after {timeout} s; its workers are not keeping up"
                )
            time.sleep(pause)
            pause = min(0.2, pause * 2)

    def publish_later(self, payload: str, delay: float) -> None:
        """Deliver ``payload`` as a new entry in ``delay`` seconds, on the server's clock."""
        self._publish_later(keys=[self.delayed], args=[payload, int(delay * 1000)])

    def retry_later(self, entry: Entry, delay: float, payload: str | None = None) -> None:
        """Settle ``entry`` now and deliver ``payload`` (default: the same) again in ``delay`` seconds."""
        member = payload if payload is not None else entry.payload
        try:
            arguments: list[str | int] = [self.group, member, int(delay * 1000), entry.id]
            self._delay(keys=[self.stream, self.delayed], args=arguments)
        except redis.ResponseError as error:
            if not _lost_group(error):
                raise
            self.publish_later(member, delay)  # the entry went with the group; the retry must not

    def release_due(self, limit: int = 1000) -> int:
        """Move delayed entries whose time has come into the stream; how many moved."""
        return int(self._release_due(keys=[self.stream, self.delayed], args=[limit]))

    # -- consuming ------------------------------------------------------------------------
    def read(self, count: int = 100, block: float = 1.0) -> tuple[list[Entry], list[Entry]]:
        """(entries to process, entries just dead-lettered). An entry whose lease ran out is claimed
        first and comes alone: its consumer died, maybe on it, and a file that kills its worker must
        not take the rest of a batch with it each time. Otherwise up to ``count`` new entries are
        read, waiting up to ``block`` seconds for some. A group the server lost is made again."""
        try:
            return self._read(count, block)
        except redis.ResponseError as error:
            if not _lost_group(error):
                raise
            LOGGER.warning("Stream %s lost its group %s (a Redis restart or FLUSHALL?); creating it again",
                           self.stream, self.group)  # fmt: skip
            self.start()
            return [], []

    def _read(self, count: int, block: float) -> tuple[list[Entry], list[Entry]]:
        self.release_due()
        dead: list[Entry] = []
        while claimed := self._claim_expired():
            if claimed.deliveries <= self.max_deliveries:
                return [claimed], dead
            self._dead_letter(claimed)
            dead.append(claimed)
        reply: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=count, block=max(1, int(block * 1000))
        )
        fresh = [Entry(_text(i), _payload(f), 1) for _, messages in reply or [] for i, f in messages]
        return fresh, dead

    def _claim_expired(self) -> Entry | None:
        # XPENDING IDLE finds the oldest expired lease anywhere in the list in one round trip;
        # XAUTOCLAIM from there takes it (or nothing, when another consumer was quicker).
        expired = self.client.xpending_range(self.stream, self.group, "-", "+", 1, idle=self.lease_ms)
        if not expired:
            return None
        _cursor, messages, *_deleted = self.client.xautoclaim(
            self.stream, self.group, self.consumer, self.lease_ms, start_id=expired[0]["message_id"], count=1
        )
        for entry_id, fields in messages:
            entry_id = _text(entry_id)
            if not fields:  # deleted from the stream meanwhile: nothing left to do for it
                self.ack(entry_id)
                return self._claim_expired()
            return Entry(entry_id, _payload(fields), self._deliveries(entry_id))
        return None

    def _deliveries(self, entry_id: str) -> int:
        """The delivery count XAUTOCLAIM just raised, as XPENDING reports it."""
        pending = self.client.xpending_range(self.stream, self.group, min=entry_id, max=entry_id, count=1)
        return int(pending[0]["times_delivered"]) if pending else 1

    def _dead_letter(self, entry: Entry) -> None:
        # Delivered this many times without an acknowledgement; the claim that found it does not count.
        deliveries = entry.deliveries - 1
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self.dead_stream,
                {"payload": entry.payload, "id": entry.id, "deliveries": deliveries, "step": self.step},
            )
            pipe.xack(self.stream, self.group, entry.id)
            pipe.xdel(self.stream, entry.id)
            pipe.execute()
        LOGGER.error(
            "Step %s: entry %s delivered %d times unacknowledged (max_deliveries %d); moved to %s",
            self.step,
            entry.id,
            deliveries,
            self.max_deliveries,
            self.dead_stream,
        )

    def ack(self, *ids: str) -> None:
        """The step's effects for these entries are complete: drop them from the pending list and stream."""
        if not ids:
            return
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xack(self.stream, self.group, *ids)
            pipe.xdel(self.stream, *ids)
            try:
                pipe.execute()
            except redis.ResponseError as error:
                if not _lost_group(error):
                    raise  # a lost group lost these entries with it: nothing left to acknowledge

    def renew(self, *ids: str) -> None:
        """Still working on these (a long file): restart their lease without counting a delivery."""
        if ids:
            self._claim_quietly(ids, idle=None)

    def hand_back(self, *ids: str) -> None:
        """Give these up now (a graceful stop): their lease is made to have run out already."""
        if ids:
            self._claim_quietly(ids, idle=self.lease_ms)

    def _claim_quietly(self, ids: tuple[str, ...], idle: int | None) -> None:
        try:
            claimed: list[Any] = list(ids)
            self.client.xclaim(self.stream, self.group, self.consumer, 0, claimed, idle=idle, justid=True)
        except redis.ResponseError as error:
            if not _lost_group(error):
                raise

    # -- looking ----------------------------------------------------------------------------
    def dead_letters(self, count: int = 100) -> list[Mapping[str, str]]:
        """The dead-letter stream's entries, oldest first, as text."""
        entries: Any = self.client.xrange(self.dead_stream, count=count)
        return [
            {_text(k): _text(v) for k, v in fields.items()} | {"dead_id": _text(i)} for i, fields in entries
        ]

    def drop_dead(self, *dead_ids: str) -> int:
        """Forget these dead letters (the files stay where the failure policy put them)."""
        return int(self.client.xdel(self.dead_stream, *dead_ids)) if dead_ids else 0

    def outstanding(self) -> int:
        """Entries unread or pending (acknowledged ones are deleted; delayed ones are not in the stream)."""
        return int(self.client.xlen(self.stream))

    def waiting(self) -> list[str]:
        """Every payload not yet settled: in the stream (unread or pending) or in the delay set, read
        in one transaction, so an entry moving from one to the other is seen once."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.xrange(self.stream)
            pipe.zrange(self.delayed, 0, -1)
            entries, delayed = pipe.execute()
        return [_payload(fields) for _, fields in entries] + [_text(member) for member in delayed]

    def status(self) -> dict[str, Any]:
        """What ``datapipelines ingest status`` shows for this step."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.xlen(self.stream)
            pipe.xrange(self.stream, count=1)
            pipe.zcard(self.delayed)
            pipe.xlen(self.dead_stream)
            (seconds, micros), outstanding, oldest, delayed, dead = pipe.execute()
        try:
            pending = int(self.client.xpending(self.stream, self.group)["pending"])
            consumers = [
                {
                    "name": _text(consumer["name"]),
                    "pending": int(consumer["pending"]),
                    "idle_s": round(int(consumer["idle"]) / 1000, 3),
                }
                for consumer in self.client.xinfo_consumers(self.stream, self.group)
            ]
        except redis.ResponseError as error:
            if not _lost_group(error) and "no such key" not in str(error):
                raise
            pending, consumers = 0, []  # no worker has started since the server lost the group
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        oldest_ms = int(_text(oldest[0][0]).partition("-")[0]) if oldest else None
        return {
            "outstanding": int(outstanding),
            "pending": pending,
            "delayed": int(delayed),
            "oldest_age_s": None if oldest_ms is None else round(max(0, now_ms - oldest_ms) / 1000, 3),
            "dead": int(dead),
            "consumers": consumers,
        }


def warn_if_evictable(client: redis.Redis) -> bool:
    """Log a warning when the server's ``maxmemory-policy`` may evict any key, streams included."""
    try:
        policy = _text(client.config_get("maxmemory-policy").get("maxmemory-policy", ""))
    except redis.ResponseError:
        return False  # CONFIG is disabled (managed Redis): nothing to say
    if not policy.startswith("allkeys-"):
        return False
    LOGGER.warning(
        "Redis maxmemory-policy is %s: under memory pressure it may evict the ingest streams and lose "
        "their pending entries; use noeviction or a volatile-* policy",
        policy,
    )
    return True
