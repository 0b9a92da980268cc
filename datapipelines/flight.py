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

LOGGER = logging.getLogger(__name__)
# A lock server that cannot be reached must not fail the get: the caller fetches unlocked.
_UNREACHABLE = (redis.RedisError, OSError)


class _Call:
    __slots__ = ("done", "result", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


class SingleFlight:
    """Runs one call per key at a time; callers that arrive meanwhile share its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Any, _Call] = {}

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
    ) -> None:
        if client is None:
            client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.client = client
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
        try:
            taken = self.client.set(f"{self.namespace}:{key}", token, nx=True, px=int(self.ttl * 1000))
        except _UNREACHABLE as error:
            LOGGER.warning("RedisLock could not reach Redis (%r); fetching %s without the lock", error, key)
            return ""
        return token if taken else None

    def release(self, key: str, token: str) -> None:
        if not token:
            return
        try:
            self._release(keys=[f"{self.namespace}:{key}"], args=[token])
        except _UNREACHABLE as error:
            # The lock expires by itself after ttl.
            LOGGER.warning("RedisLock could not release %s (%r)", key, error)

    def held(self, key: str) -> bool:
        try:
            return bool(self.client.exists(f"{self.namespace}:{key}"))
        except _UNREACHABLE:
            return False

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
