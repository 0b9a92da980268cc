"""Cross-process invalidation of in-process tiers over Redis pub/sub.

::

    bus = RedisInvalidation("redis://127.0.0.1:6379/0")
    pipeline = DataPipeline([MemoryStore(), RedisStore(), source], invalidation=bus)

Every ``pipeline.invalidate(T, query)`` and every put publishes the affected
keys on one channel; each process's subscriber thread drops them from the
memory tiers of the pipelines attached there. Stores of this process are
handled at once, without a round trip (the publishing pipeline's own stores
are already up to date); messages carry an origin id so a process ignores
what it published itself.

Redis being down never reaches the caller: a failed publish is logged once per
outage and counted, publishes are skipped while a breaker is open, and the
subscriber reconnects with backoff. Nothing is lost on the way: the keys of a
failed or skipped publish are kept and sent again as soon as Redis answers
(the subscriber's reconnect closes the breaker at once); more than
``max_pending`` of them are sent as one "clear everything" message. Messages
sent while a subscriber was disconnected never reach it, so after a reconnect
it clears the attached memory tiers (set ``clear_on_reconnect=False`` to keep
them and accept stale entries until they expire).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import Any

import redis

from ..breaker import CircuitBreaker
from ..store import Store

# The name it had before it moved here, which logging configurations name.
LOGGER = logging.getLogger("datapipelines.invalidation")

_COUNTERS = (
    "published",
    "publish_errors",
    "publish_skips",
    "received",
    "ignored",
    "dropped",
    "bad_messages",
    "reconnects",
    "resent",
)

# Every live instance in this process, so one can update the others' stores directly.
_INSTANCES: weakref.WeakSet[RedisInvalidation] = weakref.WeakSet()
_process_origin = uuid.uuid4().hex


def _new_origin_after_fork() -> None:
    # A forked child is another process: it must not ignore its parent's messages.
    global _process_origin
    _process_origin = uuid.uuid4().hex
    for instance in list(_INSTANCES):
        instance._after_fork()


os.register_at_fork(after_in_child=_new_origin_after_fork)


class RedisInvalidation:
    """Publishes invalidated keys and drops other processes' keys from attached memory tiers.

    ``url`` or ``client`` (a ``redis.Redis``) says where; ``channel`` is shared
    by every process that must see each other's invalidations. Several pipelines
    may attach to one instance, several instances may live in one process.
    ``socket_timeout`` bounds a publish to an unreachable server; ``backoff``
    (first, longest) spaces the subscriber's reconnect attempts in seconds;
    ``max_pending`` bounds the keys kept while publishing fails.
    Safe to share between threads; call :meth:`close` when done.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: Any = None,
        channel: str = "datapipelines:invalidate",
        socket_timeout: float = 1.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        clear_on_reconnect: bool = True,
        breaker: CircuitBreaker | None = None,
        max_pending: int = 10_000,
    ) -> None:
        if not isinstance(channel, str) or not channel:
            raise ValueError(f"RedisInvalidation channel must be a non-empty string, got {channel!r}")
        self._owns_client = client is None
        if client is None:
            client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                health_check_interval=15,
            )
        self.client = client
        self.channel = channel
        self.clear_on_reconnect = clear_on_reconnect
        self._backoff = backoff
        self._breaker = breaker if breaker is not None else CircuitBreaker(failures=1, cooldown=1.0)
        self._lock = threading.Lock()
        # id(pipeline) -> (weak reference to it, its in-process stores at attach time)
        self._groups: dict[int, tuple[weakref.ref[Any], tuple[Store, ...]]] = {}
        self._counts = dict.fromkeys(_COUNTERS, 0)
        # Keys whose publish failed or was skipped, sent again once Redis answers;
        # past max_pending, one "clear everything" message stands for them all.
        self._pending: set[str] = set()
        self._pending_overflow = False
        self._max_pending = max_pending
        self._publish_failing = False
        self._closed = threading.Event()
        self._subscribed = threading.Event()
        self._thread: threading.Thread | None = None
        _INSTANCES.add(self)

    def __repr__(self) -> str:
        return f"RedisInvalidation(channel={self.channel!r})"

    # -- the protocol the pipeline calls -------------------------------------------
    def attach(self, pipeline: Any) -> None:
        """Remember ``pipeline``'s in-process stores and start listening (once)."""
        key = id(pipeline)

        def forget(_: Any) -> None:
            with self._lock:
                self._groups.pop(key, None)

        with self._lock:
            self._groups[key] = (weakref.ref(pipeline, forget), tuple(pipeline.local_stores()))
            if self._thread is None and not self._closed.is_set():
                self._start()

    def publish(self, keys: Sequence[str], pipeline: Any = None) -> None:
        """Drop ``keys`` from every other memory tier of this process, then tell the other processes.

        ``pipeline`` names the publisher, whose stores are already up to date;
        without it every store attached to this instance is taken to be.
        """
        keys = list(keys)
        if not keys:
            return
        if pipeline is not None:
            current = {id(store) for store in pipeline.local_stores()}
        else:
            current = {id(store) for store in self._stores()}
        seen = set(current)
        for instance in list(_INSTANCES):
            for store in instance._stores():
                if id(store) not in seen:
                    seen.add(id(store))
                    self._drop(store, keys)
        self._send(keys)

    # -- publishing -------------------------------------------------------------------
    def _send(self, keys: list[str]) -> None:
        if not self._breaker.allow():
            self._count("publish_skips")
            self._hold(keys, False)
        elif self._publish({"keys": keys}):
            self._count("published")
            self._resend()
        else:
            self._hold(keys, False)

    def _publish(self, message: dict[str, Any]) -> bool:
        """Send one message; False (counted, logged once per outage) if Redis did not take it."""
        payload = json.dumps({"origin": _process_origin, **message}, separators=(",", ":"))
        try:
            self.client.publish(self.channel, payload)
        except (redis.RedisError, OSError) as error:
            self._breaker.failure()
            self._count("publish_errors")
            # One warning per outage, not one per put.
            level = logging.DEBUG if self._publish_failing else logging.WARNING
            self._publish_failing = True
            LOGGER.log(level, "Could not publish on %s (%r); will send again when Redis answers",
                       self.channel, error)  # fmt: skip
            return False
        self._breaker.success()
        self._publish_failing = False
        return True

    def _hold(self, keys: list[str], overflow: bool) -> None:
        """Keep keys (or the need to clear everything) for the next successful publish."""
        with self._lock:
            self._pending_overflow |= overflow
            if not self._pending_overflow:
                self._pending.update(keys)
                if len(self._pending) > self._max_pending:
                    self._pending_overflow = True
            if self._pending_overflow:
                self._pending.clear()

    def _resend(self) -> None:
        """Send what failed or was skipped earlier, if anything, and if the breaker lets us."""
        with self._lock:
            if not (self._pending or self._pending_overflow):
                return
            keys, overflow = sorted(self._pending), self._pending_overflow
            self._pending, self._pending_overflow = set(), False
        message: dict[str, Any] = {"keys": [], "clear": True} if overflow else {"keys": keys}
        if self._breaker.allow() and self._publish(message):
            self._count("resent")
        else:
            self._hold(keys, overflow)

    # -- subscribing ------------------------------------------------------------------
    def _start(self) -> None:
        self._subscribed.clear()
        self._thread = threading.Thread(
            target=self._listen, name=f"datapipelines-invalidation-{self.channel}", daemon=True
        )
        self._thread.start()

    def _listen(self) -> None:
        first, delay = True, self._backoff[0]
        while not self._closed.is_set():
            pubsub = self.client.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not self._closed.is_set():
                    message = pubsub.get_message(timeout=0.2)
                    if message is None:
                        self._resend()
                        continue
                    if message["type"] == "subscribe":
                        if not first:
                            self._after_gap()
                        first, delay = False, self._backoff[0]
                        self._subscribed.set()
                        # Redis answers again: publishing need not wait out the breaker's cool-down.
                        self._breaker.success()
                        self._resend()
                    elif message["type"] == "message":
                        self._receive(message["data"])
            except (redis.RedisError, OSError, ValueError) as error:
                # ValueError: redis-py reading from a socket another thread just closed.
                if self._closed.is_set():
                    break
                self._subscribed.clear()
                self._count("reconnects")
                LOGGER.warning(
                    "Invalidation channel %s lost (%r); reconnecting in %.2fs", self.channel, error, delay
                )
                self._closed.wait(delay)
                delay = min(delay * 2, self._backoff[1])
            finally:
                pubsub.close()

    def _after_gap(self) -> None:
        """Messages sent while disconnected are lost: forget what they may have invalidated."""
        if self.clear_on_reconnect:
            self._clear_all()

    def _clear_all(self) -> None:
        for store in self._stores():
            try:
                store.clear()
            except Exception as error:
                LOGGER.warning("Could not clear %r after a reconnect: %r", store, error)

    def _receive(self, data: bytes) -> None:
        self._count("received")
        try:
            message = json.loads(data)
            origin, keys = message["origin"], message["keys"]
            if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
                raise ValueError("keys must be a list of strings")
        except (ValueError, KeyError, TypeError) as error:
            self._count("bad_messages")
            LOGGER.warning("Ignored a malformed message on %s (%r): %.200r", self.channel, error, data)
            return
        if origin == _process_origin:
            self._count("ignored")
            return
        if message.get("clear") is True:
            # The sender lost track of more keys than it keeps: anything may be stale.
            self._clear_all()
        for store in self._stores():
            self._drop(store, keys)

    def _drop(self, store: Store, keys: list[str]) -> None:
        try:
            removed = store._delete_many(keys)
        except Exception as error:
            LOGGER.warning("Could not drop %d invalidated keys from %r: %r", len(keys), store, error)
            return
        self._count("dropped", removed)

    # -- state ------------------------------------------------------------------------
    def _stores(self) -> list[Store]:
        """The attached stores, each once."""
        with self._lock:
            groups = list(self._groups.values())
        unique: dict[int, Store] = {}
        for _, stores in groups:
            for store in stores:
                unique.setdefault(id(store), store)
        return list(unique.values())

    def _count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def _after_fork(self) -> None:
        # The parent's locks and thread do not exist in the child: start over. What the
        # parent still has to send again is the parent's to send.
        self._lock = threading.Lock()
        self._pending, self._pending_overflow = set(), False
        self._subscribed = threading.Event()
        if self._thread is not None and not self._closed.is_set():
            self._start()

    def wait_subscribed(self, timeout: float | None = None) -> bool:
        """Block until the subscriber listens on the channel; False if ``timeout`` ran out first."""
        return self._subscribed.wait(timeout)

    @property
    def subscribed(self) -> bool:
        return self._subscribed.is_set()

    def stats(self) -> dict[str, int]:
        """Counters: published, publish_errors, publish_skips (breaker open), received,
        ignored (own process), dropped (keys removed), bad_messages, reconnects,
        resent (messages carrying what failed or was skipped before)."""
        with self._lock:
            return dict(self._counts)

    def reset_stats(self) -> None:
        with self._lock:
            self._counts = dict.fromkeys(_COUNTERS, 0)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the subscriber thread and, if this instance made the client, close it."""
        self._closed.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._subscribed.clear()
        _INSTANCES.discard(self)
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> RedisInvalidation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
