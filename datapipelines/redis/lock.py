"""RedisLock: single-flight across processes that share a Redis.

The holder of ``SET key token NX PX`` calls the source; the others wait for the
value to appear in the cache, and nobody waits forever. Threads use
:meth:`RedisLock.acquire` and friends on redis-py; coroutines use the ``a``
twins on redis.asyncio, one client per event loop. Both sides share the Lua
release script, the key names and the circuit breaker.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import redis
import redis.asyncio

from ..breaker import CircuitBreaker
from ..errors import ConfigurationError

LOGGER = logging.getLogger(__name__)
# A lock server that cannot be reached must not fail the get: the caller fetches unlocked.
_UNREACHABLE = (redis.RedisError, OSError)
_UNANSWERED: Any = object()
_DEFAULT_URL = "redis://127.0.0.1:6379/0"

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

    ``client`` is a redis-py client for the blocking calls (default: one for
    ``url``). The async calls make a redis.asyncio client per event loop with
    ``async_client()``, by default one for ``url``; a lock given only ``client``
    needs ``url`` or ``async_client`` to be used from coroutines.
    """

    def __init__(
        self,
        client: Any = None,
        *,
        url: str | None = None,
        namespace: str = "datapipelines:lock",
        ttl: float = 10.0,
        wait_timeout: float = 15.0,
        poll: float = 0.02,
        socket_timeout: float = 1.0,
        breaker: CircuitBreaker | None = None,
        async_client: Callable[[], Any] | None = None,
    ) -> None:
        timeouts: dict[str, Any] = {"socket_timeout": socket_timeout}
        timeouts["socket_connect_timeout"] = socket_timeout
        if client is None:
            url = url or _DEFAULT_URL
            client = redis.Redis.from_url(url, **timeouts)
        if async_client is None and url is not None:
            async_client = functools.partial(redis.asyncio.Redis.from_url, url, **timeouts)
        self.client = client
        self.breaker = breaker if breaker is not None else CircuitBreaker(failures=1, cooldown=1.0)
        self.namespace = namespace
        self.ttl = ttl
        self.wait_timeout = wait_timeout
        self.poll = poll
        self._release = client.register_script(_RELEASE)
        self._async_client = async_client
        # Per event loop: its client and the release script registered on it.
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Any, Any]] = (
            weakref.WeakKeyDictionary()
        )
        # Releases running on after their holder was cancelled: kept until done.
        self._releasing: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        return f"RedisLock(namespace={self.namespace!r})"

    # -- blocking ------------------------------------------------------------------

    def acquire(self, key: str) -> str | None:
        """A token if this process now holds the lock for ``key``, None if another does.

        An empty token means Redis did not answer: go ahead without the lock.
        """
        token = uuid.uuid4().hex
        name, px = self._name(key), self._px
        taken = self._call("take", key, lambda: self.client.set(name, token, nx=True, px=px))
        return _token(taken, token)

    def release(self, key: str, token: str) -> None:
        if token:
            # Unanswered, the lock expires by itself after ttl.
            self._call("release", key, lambda: self._release(keys=[self._name(key)], args=[token]))

    def held(self, key: str) -> bool:
        held = self._call("check", key, lambda: self.client.exists(self._name(key)))
        return held is not _UNANSWERED and bool(held)

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

    def _call(self, action: str, key: str, command: Callable[[], Any]) -> Any:
        """``command()`` under the breaker; _UNANSWERED if Redis failed or the breaker is open."""
        if not self.breaker.allow():
            return _UNANSWERED
        try:
            result = command()
        except _UNREACHABLE as error:
            return self._unanswered(action, key, error)
        self.breaker.success()
        return result

    # -- async ---------------------------------------------------------------------

    async def aacquire(self, key: str) -> str | None:
        """:meth:`acquire` for coroutines."""
        token = uuid.uuid4().hex
        client, _ = self._for_loop()
        name, px = self._name(key), self._px
        taken = await self._acall("take", key, lambda: client.set(name, token, nx=True, px=px))
        return _token(taken, token)

    async def arelease(self, key: str, token: str) -> None:
        """:meth:`release` for coroutines; a holder cancelled meanwhile still releases."""
        if not token:
            return
        _, release = self._for_loop()
        task = asyncio.ensure_future(
            self._acall("release", key, lambda: release(keys=[self._name(key)], args=[token]))
        )
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        await asyncio.shield(task)

    async def aheld(self, key: str) -> bool:
        """:meth:`held` for coroutines."""
        client, _ = self._for_loop()
        held = await self._acall("check", key, lambda: client.exists(self._name(key)))
        return held is not _UNANSWERED and bool(held)

    async def await_value(self, key: str, found: Callable[[], Awaitable[Any]], missing: Any) -> Any:
        """:meth:`wait` for coroutines: ``found()`` is awaited, the poll sleeps without blocking."""
        deadline = time.monotonic() + self.wait_timeout
        while time.monotonic() < deadline:
            value = await found()
            if value is not missing:
                return value
            if not await self.aheld(key):
                return await found()
            await asyncio.sleep(self.poll)
        return missing

    async def aclose(self) -> None:
        """Close the redis.asyncio client of the running event loop, if it made one."""
        made = self._async.pop(asyncio.get_running_loop(), None)
        if made is not None:
            await made[0].aclose()

    async def _acall(self, action: str, key: str, command: Callable[[], Awaitable[Any]]) -> Any:
        """:meth:`_call` for coroutines, under the same breaker."""
        if not self.breaker.allow():
            return _UNANSWERED
        try:
            result = await command()
        except _UNREACHABLE as error:
            return self._unanswered(action, key, error)
        self.breaker.success()
        return result

    def _for_loop(self) -> tuple[Any, Any]:
        """The running loop's redis.asyncio client and release script, made on first use."""
        loop = asyncio.get_running_loop()
        made = self._async.get(loop)
        if made is None:
            if self._async_client is None:
                raise ConfigurationError(
                    f"{self!r} was given a redis-py client only; give it url= or async_client= "
                    "to use it from coroutines"
                )
            client = self._async_client()
            made = self._async[loop] = (client, client.register_script(_RELEASE))
        return made

    # -- shared --------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return f"{self.namespace}:{key}"

    @property
    def _px(self) -> int:
        return int(self.ttl * 1000)

    def _unanswered(self, action: str, key: str, error: BaseException) -> Any:
        self.breaker.failure()
        LOGGER.warning("RedisLock could not %s the lock of %s (%r); going on without it", action, key, error)
        return _UNANSWERED


def _token(taken: Any, token: str) -> str | None:
    """What acquire returns: ``token`` if taken, None if held by another, "" if Redis did not answer."""
    if taken is _UNANSWERED:
        return ""
    return token if taken else None
