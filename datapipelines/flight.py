"""Single-flight: concurrent identical misses cause one source call.

:class:`SingleFlight` works between threads of one process. :class:`RedisLock`
(opt-in) extends it across processes that share a Redis: the holder of
``SET key token NX PX`` calls the source; the others wait for the value to
appear in the cache, and nobody waits forever.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from .breaker import CircuitBreaker
from .forks import reset_in_children

LOGGER = logging.getLogger(__name__)
# A lock server that cannot be reached must not fail the get: the caller fetches unlocked.
_UNREACHABLE = (redis.RedisError, OSError)
_UNANSWERED: Any = object()


class _Call:
    __slots__ = ("done", "result", "error", "leader")

    def __init__(self) -> None:
        self.leader = threading.get_ident()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Runs one call per key at a time; callers that arrive meanwhile share its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Any, _Call] = {}
        reset_in_children(self)

    def _after_fork(self) -> None:
        # Calls led by the parent's other threads would never end here: forget them.
        me = threading.get_ident()
        self._lock = threading.Lock()
        self._calls = {key: call for key, call in self._calls.items() if call.leader == me}

    def run(self, key: Any, function: Callable[[], Any]) -> tuple[Any, bool]:
        """``(result, joined)``: joined is True when another caller's call was shared."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if leader:
                call = self._calls[key] = _Call()
        assert call is not None
        if not leader:
            call.done.wait()
            if call.error is not None:
                raise call.error
            return call.result, True
        try:
            call.result = function()
            return call.result, False
        except BaseException as error:
            call.error = error
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()


_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""


class RedisLock:
    """A cross-process lock per key in Redis: ``SET NX PX`` with a random token.

    ``ttl`` bounds how long a dead holder blocks others; ``wait_timeout`` how long
    a waiter polls before calling the source itself; ``poll`` the polling period.
    A Redis that does not answer costs one ``socket_timeout``, then ``breaker``
    (default: open after one failure, for a second) lets callers fetch without
    the lock, paying nothing, until a probe gets through again.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        url: str = "redis://127.0.0.1:6379/0",
        namespace: str = "datapipelines:lock",
        ttl: float = 10.0,
        wait_timeout: float = 15.0,
        poll: float = 0.02,
        socket_timeout: float = 1.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        if client is None:
            client = redis.Redis.from_url(
                url, socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout
            )
        self.client = client
        self.breaker = breaker if breaker is not None else CircuitBreaker(failures=1, cooldown=1.0)
        self.namespace = namespace
        self.ttl = ttl
        self.wait_timeout = wait_timeout
        self.poll = poll
        self._release = client.register_script(_RELEASE)

    def acquire(self, key: str) -> str | None:
        """A token if this process now holds the lock for ``key``, None if another does.

        An empty token means Redis did not answer: go ahead without the lock.
        """
        token = uuid.uuid4().hex
        name, px = f"{self.namespace}:{key}", int(self.ttl * 1000)
        taken = self._call("take", key, lambda: self.client.set(name, token, nx=True, px=px))
        if taken is _UNANSWERED:
            return ""
        return token if taken else None

    def release(self, key: str, token: str) -> None:
        if token:
            # Unanswered, the lock expires by itself after ttl.
            self._call("release", key, lambda: self._release(keys=[f"{self.namespace}:{key}"], args=[token]))

    def held(self, key: str) -> bool:
        held = self._call("check", key, lambda: self.client.exists(f"{self.namespace}:{key}"))
        return held is not _UNANSWERED and bool(held)

    def _call(self, action: str, key: str, command: Callable[[], Any]) -> Any:
        """``command()`` under the breaker; _UNANSWERED if Redis failed or the breaker is open."""
        if not self.breaker.allow():
            return _UNANSWERED
        try:
            result = command()
        except _UNREACHABLE as error:
            self.breaker.failure()
            LOGGER.warning(
                "RedisLock could not %s the lock of %s (%r); going on without it", action, key, error
            )
            return _UNANSWERED
        self.breaker.success()
        return result

    def wait(self, key: str, found: Callable[[], Any], missing: Any) -> Any:
        """Poll ``found()`` until it returns a value, the lock is gone, or time is up.

        Returns the value, or ``missing`` when the caller should call the source itself.
        """
        deadline = time.monotonic() + self.wait_timeout
        while time.monotonic() < deadline:
            value = found()
            if value is not missing:
                return value
            if not self.held(key):
                return found()
            time.sleep(self.poll)
        return missing
