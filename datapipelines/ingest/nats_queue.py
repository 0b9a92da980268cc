"""A step's work queue on NATS JetStream, with the methods and semantics of RedisStreamQueue.

The stream ``<prefix>_<step>`` has work-queue retention (an acknowledged message
is gone), at most ``max_length`` messages and discard-new, so a full stream
refuses a publish (back-pressure) and never drops an unacknowledged message. One
durable pull consumer per step: AckWait is the lease, AckProgress renews it,
MaxDeliver stops redelivery one delivery after ``max_deliveries``, and the read
that gets that last delivery moves the message to the dead-letter stream with
its count, so a file that kills its worker every time still ends there (should
that reader die too, the server's MaxDeliver advisory makes any live queue
object of the step bury it).
``retry_later`` parks the payload in a delay stream whose messages are held
back with NakWithDelay until due, then republished as new entries (deliveries
start again at 1, as a policy retry is not a crash).

nats-py is asyncio-only: each queue runs its own event loop in a background
thread and every method waits for its coroutine there; :meth:`close` ends both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import threading
import time
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

from ..errors import DataPipelinesError
from ..extras import reraise_naming_extra
from .redis_queue import DEFAULT_PREFIX, Entry, QueueFullError, check_limits

try:
    import nats
    from nats.aio.msg import Msg
    from nats.js import api
    from nats.js.errors import APIError, BadRequestError, NotFoundError
except ImportError as error:
    reraise_naming_extra("NatsStreamQueue", error)

LOGGER = logging.getLogger(__name__)
T = TypeVar("T")

DUE = "Datapipelines-Due"  # ms since the epoch, on a parked retry
_ENTRY, _DELIVERIES, _STEP = "Datapipelines-Entry", "Datapipelines-Deliveries", "Datapipelines-Step"
_STREAM_FULL = 10077  # JetStream's "maximum messages exceeded"
_NO_MESSAGES = ("404", "408")
_SETTLE_TIMEOUT = 30.0  # seconds any single server exchange may take before it is an error


class NatsQueueError(DataPipelinesError):
    """The NATS server could not be reached or refused an operation."""


def _token(text: str) -> str:
    """``text`` as a stream, consumer or subject token (no dots, wildcards, spaces or colons)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class _LoopThread:
    """One asyncio event loop in a daemon thread; ``run`` waits for a coroutine there."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class NatsStreamQueue:
    """The JetStream stream ``<prefix>_<step>`` and its consumer ``<step>``, seen by one consumer.

    ``url``: the NATS server(s), e.g. ``nats://127.0.0.1:4222`` (comma-separated
    for a cluster). The other keywords mean what they mean for RedisStreamQueue.
    Close it (or use it as a context manager) to end its connection and thread.
    """

    def __init__(
        self,
        url: str,
        step: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        consumer: str | None = None,
        max_length: int = 10_000,
        lease: float = 30.0,
        max_deliveries: int = 5,
    ) -> None:
        check_limits(type(self).__name__, step, max_length, lease, max_deliveries)
        self.url = url
        self.step = step
        base, subject = f"{_token(prefix)}_{_token(step)}", f"{_token(prefix)}.{_token(step)}"
        self.stream, self.subject = base, subject
        self.dead_stream, self.dead_subject = f"{base}_dead", f"{subject}.dead"
        self.delayed_stream, self.delayed_subject = f"{base}_delayed", f"{subject}.delayed"
        self.group = _token(step)
        self.consumer = consumer or f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self.max_length = max_length
        self.lease = lease
        self.max_deliveries = max_deliveries
        self._loop: _LoopThread | None = None
        self._client: Any = None
        self._js: Any = None
        self._work: Any = None  # the pull subscription on the step's consumer
        self._advisories: Any = None
        self._last_error: Exception | None = None
        self._held: dict[str, Msg] = {}  # delivered to this object, not yet settled
        self._waiting: list[Msg] = []  # delivered to this object, to be returned by the next reads

    @classmethod
    def from_url(cls, url: str, step: str, **options: Any) -> NatsStreamQueue:
        """The queue of ``step`` on the server at ``url`` (``nats://host:port``)."""
        return cls(url, step, **options)

    def __repr__(self) -> str:
        return f"NatsStreamQueue({self.url!r}, {self.step!r}, stream={self.stream!r})"

    def __enter__(self) -> NatsStreamQueue:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- lifetime -------------------------------------------------------------------------
    def start(self) -> None:
        """Connect, and create the streams and consumers if missing (or bring their settings up to date)."""
        if self._loop is None:
            self._loop = _LoopThread(f"nats-{self.stream}")
        self._call(self._start())

    def close(self) -> None:
        """Close the connection (messages still held come back after their lease) and end the thread."""
        if self._loop is None:
            return
        if self._client is not None:
            try:
                self._call(self._client.close())
            finally:
                self._client = self._js = self._work = self._advisories = None
                self._held.clear()
                self._waiting.clear()
        self._loop.close()
        self._loop = None

    def _call(self, coroutine: Coroutine[Any, Any, T], waits: float = 0.0) -> T:
        """Run ``coroutine`` on the queue's loop; ``waits``: seconds it may block on purpose."""
        if self._loop is None:
            coroutine.close()
            raise NatsQueueError(f"{self!r} is closed; call start() first")
        try:
            return self._loop.run(coroutine, 2 * _SETTLE_TIMEOUT + waits)
        except APIError as error:
            raise NatsQueueError(f"{self!r}: the server refused: {error}") from error

    async def _start(self) -> None:
        if self._client is None:
            try:
                # A few tries, so that a wrong URL fails start() within seconds ...
                self._client = await nats.connect(
                    self.url.split(","),
                    connect_timeout=2,
                    max_reconnect_attempts=2,
                    reconnect_time_wait=1,
                    error_cb=self._on_error,
                    name=self.consumer,  # how the server's monitoring shows this object
                )
            except Exception as error:
                cause = self._last_error or error
                raise NatsQueueError(f"cannot connect to NATS at {self.url}: {cause}") from None
            # ... then reconnecting without end once connected: a server restart must not end a worker.
            self._client.options["max_reconnect_attempts"] = -1
            self._js = self._client.jetstream(timeout=_SETTLE_TIMEOUT)
        work_queue, limits = api.RetentionPolicy.WORK_QUEUE, api.RetentionPolicy.LIMITS
        await self._ensure_stream(
            self.stream, self.subject, work_queue, max_msgs=self.max_length, discard=api.DiscardPolicy.NEW
        )
        await self._ensure_stream(self.delayed_stream, self.delayed_subject, work_queue)
        await self._ensure_stream(self.dead_stream, self.dead_subject, limits)
        # One delivery past max_deliveries: that read dead-letters it, and the server stops there.
        await self._ensure_consumer(self.stream, self.group, self.lease, self.max_deliveries + 1)
        await self._ensure_consumer(self.delayed_stream, self.group, _SETTLE_TIMEOUT, -1)
        if self._work is None:
            self._work = await self._js.pull_subscribe_bind(durable=self.group, stream=self.stream)
        if self._advisories is None:
            advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{self.group}"
            self._advisories = await self._client.subscribe(advisory, cb=self._on_max_deliveries)

    async def _on_error(self, error: Exception) -> None:
        self._last_error = error
        LOGGER.warning("%r: %r", self, error)  # one line: nats-py would print a traceback per attempt

    async def _ensure_stream(self, name: str, subject: str, retention: Any, **limits: Any) -> None:
        config = api.StreamConfig(
            name=name, subjects=[subject], retention=retention, storage=api.StorageType.FILE, **limits
        )
        try:
            await self._js.add_stream(config)
        except BadRequestError:  # it exists with other limits: take this object's
            await self._js.update_stream(config)

    async def _ensure_consumer(self, stream: str, name: str, ack_wait: float, max_deliver: int) -> None:
        config = api.ConsumerConfig(
            durable_name=name,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=-1,
        )
        # Creates it, or updates AckWait and MaxDeliver of an existing one in place: the last queue
        # object started sets them for every consumer of the step.
        await self._js.add_consumer(stream, config)

    # -- producing ------------------------------------------------------------------------
    def publish(self, payload: str, timeout: float = 10.0) -> str:
        """Append ``payload``; while the stream is full, wait up to ``timeout`` s, then raise."""
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            sequence = self._call(self._publish(self.subject, payload.encode()))
            if sequence is not None:
                return str(sequence)
            if time.monotonic() >= deadline:
                raise QueueFullError(
                    f"stream {self.stream!r} still holds {self.max_length} unacknowledged entries "
                    f"after {timeout} s; its workers are not keeping up"
                )
            time.sleep(pause)
            pause = min(0.2, pause * 2)

    async def _publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> int | None:
        """The stream sequence, or None when the stream is full."""
        try:
            ack = await self._js.publish(subject, data, headers=headers)
        except APIError as error:
            if error.err_code == _STREAM_FULL:
                return None
            raise
        return int(ack.seq)

    def retry_later(self, entry: Entry, delay: float, payload: str | None = None) -> None:
        """Settle ``entry`` now and deliver ``payload`` (default: the same) again in ``delay`` seconds."""
        member = payload if payload is not None else entry.payload
        due = int((time.time() + delay) * 1000)
        self._call(self._retry_later(entry.id, member.encode(), due))

    async def _retry_later(self, entry_id: str, data: bytes, due: int) -> None:
        await self._js.publish(self.delayed_subject, data, headers={DUE: str(due)})
        await self._ack(entry_id)

    def release_due(self, limit: int = 1000) -> int:
        """Move parked retries whose time has come into the stream; how many moved."""
        return self._call(self._release_due(limit))

    async def _release_due(self, limit: int) -> int:
        moved = 0
        for message in await self._pull_now(self.delayed_stream, limit):
            wait = int((message.headers or {}).get(DUE, "0")) / 1000 - time.time()
            if wait > 0:
                await message.nak(delay=wait)
                continue
            # The id makes a second move of the same parked message (an ack lost) a duplicate JetStream drops.
            moved_id = f"{self.delayed_stream}-{message.metadata.sequence.stream}"
            if await self._publish(self.subject, message.data, {"Nats-Msg-Id": moved_id}) is None:
                await message.nak(delay=0.1)  # the stream is full: try again shortly
                continue
            await message.ack_sync()
            moved += 1
        return moved

    async def _pull_now(self, stream: str, batch: int) -> list[Msg]:
        """Up to ``batch`` messages the consumer ``group`` of ``stream`` has ready now, without waiting."""
        inbox = self._client.new_inbox()
        subscription = await self._client.subscribe(inbox)
        messages: list[Msg] = []
        try:
            request = json.dumps({"batch": batch, "no_wait": True}).encode()
            next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{self.group}"
            await self._client.publish(next_subject, request, reply=inbox)
            while len(messages) < batch:
                message = await subscription.next_msg(timeout=_SETTLE_TIMEOUT)
                status = (message.headers or {}).get("Status")
                if status in _NO_MESSAGES:
                    break
                if status is None:
                    messages.append(message)
        finally:
            await subscription.unsubscribe()
        return messages

    # -- consuming ------------------------------------------------------------------------
    def read(self, count: int = 100, block: float = 1.0) -> tuple[list[Entry], list[Entry]]:
        """(entries to process, entries just dead-lettered). A redelivered entry (its lease ran out)
        comes alone, as with RedisStreamQueue: its consumer died, maybe on it. Otherwise up to ``count``
        new entries, waiting up to ``block`` seconds for some."""
        self.release_due()
        return self._call(self._read(count, block), waits=block)

    async def _read(self, count: int, block: float) -> tuple[list[Entry], list[Entry]]:
        # The first message alone, then the rest only if it is new: JetStream counts a delivery for
        # every message handed out, so a batch read with a redelivered one would charge the others
        # a delivery each time their worker died on it.
        dead: list[Entry] = []
        while (message := await self._next(block)) is not None:
            if message.metadata.num_delivered <= self.max_deliveries:
                break
            dead.append(await self._dead_letter(message))
        if message is None:
            return [], dead
        batch = [message]
        if message.metadata.num_delivered == 1 and count > 1:
            for other in await self._pull_now(self.stream, count - 1):
                if other.metadata.num_delivered > self.max_deliveries:
                    dead.append(await self._dead_letter(other))
                elif other.metadata.num_delivered > 1:
                    self._waiting.append(other)  # its lease ran out meanwhile: it comes alone, next
                else:
                    batch.append(other)
        entries = [self._entry(m) for m in batch]
        self._held.update((e.id, m) for e, m in zip(entries, batch, strict=True))
        return entries, dead

    async def _next(self, block: float) -> Msg | None:
        if self._waiting:
            message = self._waiting.pop(0)
            await message.in_progress()
            return message
        try:
            [message] = await self._work.fetch(1, timeout=max(block, 0.001))
        except asyncio.TimeoutError:  # nats.errors.TimeoutError is one
            return None
        return message

    @staticmethod
    def _entry(message: Msg) -> Entry:
        metadata = message.metadata
        return Entry(str(metadata.sequence.stream), message.data.decode(), metadata.num_delivered)

    async def _dead_letter(self, message: Msg) -> Entry:
        entry = self._entry(message)
        # Delivered this many times without an acknowledgement; the read that found it does not count.
        await self._bury(entry.id, message.data, entry.deliveries - 1)
        await message.ack_sync()
        return entry

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """The server gave up on a message (MaxDeliver): its last delivery was read by a consumer that
        died before dead-lettering it. Bury it from here, whichever live queue object hears first."""
        try:
            event = json.loads(advisory.data)
            sequence = int(event["stream_seq"])
            try:
                stored = await self._js.get_msg(self.stream, sequence)
            except NotFoundError:
                return  # buried and deleted already
            await self._bury(str(sequence), stored.data or b"", int(event["deliveries"]) - 1)
            await self._js.delete_msg(self.stream, sequence)
        except NotFoundError:
            pass
        except Exception:
            LOGGER.exception("Step %s: could not dead-letter after a MaxDeliver advisory", self.step)

    async def _bury(self, entry_id: str, data: bytes, deliveries: int) -> None:
        headers = {
            _ENTRY: entry_id,
            _DELIVERIES: str(deliveries),
            _STEP: self.step,
            # Two consumers burying the same message (a read and an advisory) make one dead letter.
            "Nats-Msg-Id": f"{self.stream}-{entry_id}",
        }
        await self._js.publish(self.dead_subject, data, headers=headers)
        LOGGER.error(
            "Step %s: entry %s delivered %d times unacknowledged (max_deliveries %d); moved to %s",
            self.step,
            entry_id,
            deliveries,
            self.max_deliveries,
            self.dead_stream,
        )

    def ack(self, *ids: str) -> None:
        """The step's effects for these entries are complete: JetStream deletes them (work queue)."""
        if ids:
            self._call(self._ack(*ids))

    async def _ack(self, *ids: str) -> None:
        # ack_sync: confirmed by the server before we return, so the caller may rely on the deletion.
        await asyncio.gather(*(message.ack_sync() for message in self._take(ids)))

    def _take(self, ids: tuple[str, ...]) -> list[Msg]:
        """The held messages of ``ids``, no longer held; ids this object does not hold are ignored."""
        return [message for i in ids if (message := self._held.pop(i, None)) is not None]

    def renew(self, *ids: str) -> None:
        """Still working on these (a long file): restart their lease without counting a delivery."""
        if ids:
            self._call(self._renew(ids))

    async def _renew(self, ids: tuple[str, ...]) -> None:
        for i in ids:
            if (message := self._held.get(i)) is not None:
                await message.in_progress()
        await self._client.flush()

    def hand_back(self, *ids: str) -> None:
        """Give these up now (a graceful stop): negatively acknowledged, redelivered at once."""
        if ids:
            self._call(self._hand_back(ids))

    async def _hand_back(self, ids: tuple[str, ...]) -> None:
        for message in self._take(ids):
            await message.nak()
        await self._client.flush()

    # -- looking ----------------------------------------------------------------------------
    def dead_letters(self, count: int = 100) -> list[Mapping[str, str]]:
        """The dead-letter stream's entries, oldest first, as text."""
        return self._call(self._dead_letters(count))

    async def _dead_letters(self, count: int) -> list[Mapping[str, str]]:
        state = (await self._js.stream_info(self.dead_stream)).state
        letters: list[Mapping[str, str]] = []
        sequence = state.first_seq
        while state.messages and sequence <= state.last_seq and len(letters) < count:
            try:
                stored = await self._js.get_msg(self.dead_stream, sequence)
            except NotFoundError:  # deleted: a gap in the sequence
                sequence += 1
                continue
            headers = stored.headers or {}
            letters.append(
                {
                    "payload": (stored.data or b"").decode(),
                    "id": headers.get(_ENTRY, ""),
                    "deliveries": headers.get(_DELIVERIES, ""),
                    "step": headers.get(_STEP, ""),
                    "dead_id": str(sequence),
                }
            )
            sequence += 1
        return letters

    def outstanding(self) -> int:
        """Entries unread or pending (acknowledged ones are deleted)."""
        return self._call(self._outstanding())

    async def _outstanding(self) -> int:
        return int((await self._js.stream_info(self.stream)).state.messages)

    def delete(self) -> None:
        """Delete this step's streams (and so their consumers and every entry in them)."""
        self._call(self._delete())

    async def _delete(self) -> None:
        for stream in (self.stream, self.delayed_stream, self.dead_stream):
            try:
                await self._js.delete_stream(stream)
            except NotFoundError:
                pass
