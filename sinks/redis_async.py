"""The async byte path of a RedisStore, on redis.asyncio: one client per event loop.

:class:`AsyncRedisBytes` gives a store's five byte-level operations an async
twin: ``afetch``, ``afetch_many``, ``asave_many``, ``adelete_many`` and
``aclear``. It keeps the store's key layout (``<namespace>:<key>``), writes the
TTL in the same command as the value (``SET ... PX``), and makes a batch one
round trip (``MGET``; a pipeline of ``SET``). Entries are the store's encoded
bytes, so what one path writes the other reads.

An asyncio client belongs to the loop it first ran on, so each event loop gets
its own, on a :class:`~redis.asyncio.BlockingConnectionPool` (a burst of tasks
waits for a connection rather than failing); a store used from two loops in
sequence, or from threads that each run a loop, works. ``aclose()`` closes the
calling loop's client: call it before the loop ends (a client left on an ended
loop is dropped, unclosed, when another loop first asks for its own). The
connection settings (address, database, password, TLS, timeouts) are the
store's own client's; a cluster store gets an async cluster client on the
same nodes.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from datapipelines.errors import ConfigurationError

from .redis import _CLEAR_BATCH, _GLOB_SPECIALS, _OTHER_TYPE

# The sync connection class of the store's client -> its asyncio counterpart.
_ASYNC_CONNECTIONS = {
    redis.Connection: redis.asyncio.Connection,
    redis.SSLConnection: redis.asyncio.SSLConnection,
    redis.UnixDomainSocketConnection: redis.asyncio.UnixDomainSocketConnection,
}
# The settings an asyncio connection takes as the sync one does (the rest are sync machinery).
_SETTINGS = (
    "host", "port", "path", "db", "username", "password", "credential_provider", "client_name",
    "socket_timeout", "socket_connect_timeout", "socket_keepalive", "socket_keepalive_options",
    "retry_on_timeout", "health_check_interval", "encoding", "encoding_errors", "protocol",
    "ssl_keyfile", "ssl_certfile", "ssl_cert_reqs", "ssl_ca_certs", "ssl_ca_data", "ssl_ca_path",
    "ssl_check_hostname", "ssl_min_version", "ssl_ciphers", "ssl_password",
)  # fmt: skip


def expiry_ms(seconds: float | None) -> int | None:
    """``PX`` for a lifetime: whole milliseconds, rounded up so a short expiry never becomes "now"."""
    return None if seconds is None else max(1, math.ceil(seconds * 1000))


def namespace_pattern(prefix: str) -> str:
    """A ``SCAN MATCH`` pattern for every key under ``prefix`` and nothing else."""
    return "".join("\\" + c if c in _GLOB_SPECIALS else c for c in prefix) + "*"


class AsyncRedisBytes:
    """The async byte-level twins of ``store`` (a RedisStore), one redis.asyncio client per event loop.

    ``max_connections`` bounds each loop's pool; a task finding them all busy
    waits up to ``pool_timeout`` seconds (None: as long as it takes), then fails
    with ``redis.ConnectionError``.
    """

    def __init__(self, store: Any, *, max_connections: int = 50, pool_timeout: float | None = 20.0) -> None:
        sync = store.client
        self._store = store
        self._prefix = store.namespace + ":"
        self._cluster = isinstance(sync, RedisCluster)
        settings = sync.get_connection_kwargs()
        self._settings = {name: settings[name] for name in _SETTINGS if name in settings}
        self._max_connections = max_connections
        self._pool_timeout = pool_timeout
        if self._cluster:
            self._nodes = [(node.host, node.port) for node in sync.get_nodes()]
        else:
            connection_class = sync.connection_pool.connection_class
            if connection_class not in _ASYNC_CONNECTIONS:
                raise ConfigurationError(
                    f"{store!r}: no asyncio counterpart for a client on {connection_class.__name__} "
                    f"connections (pass a client built by redis-py's from_url, or a URL)"
                )
            self._connection_class = _ASYNC_CONNECTIONS[connection_class]
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._lock = threading.Lock()  # loops in several threads may ask for their client at once

    def __repr__(self) -> str:
        return f"AsyncRedisBytes({self._store!r})"

    def _client(self) -> Any:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            with self._lock:
                # A client of a loop that ended without aclose() cannot be closed any more: let it go.
                for ended in [other for other in self._clients if other.is_closed()]:
                    del self._clients[ended]
                client = self._clients.get(loop)
                if client is None:
                    client = self._clients[loop] = self._connect()
        return client

    def _connect(self) -> Any:
        if self._cluster:
            return AsyncRedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in self._nodes],
                max_connections=self._max_connections, **self._settings,
            )  # fmt: skip
        pool = redis.asyncio.BlockingConnectionPool(
            connection_class=self._connection_class, max_connections=self._max_connections,
            timeout=self._pool_timeout, **self._settings,
        )  # fmt: skip
        return redis.asyncio.Redis.from_pool(pool)

    # -- the five byte-level operations ----------------------------------------------------
    async def afetch(self, key: str) -> Any:
        """The bytes under ``key`` (None when there are none; a marker the codec rejects for a key
        of another Redis type)."""
        try:
            return await self._client().get(self._prefix + key)
        except redis.ResponseError as error:
            if not str(error).startswith("WRONGTYPE"):
                raise
            return _OTHER_TYPE

    async def afetch_many(self, keys: Sequence[str]) -> list[Any]:
        """The bytes (or None) under ``keys``, aligned with them, in one round trip."""
        if not keys:
            return []
        client, prefix = self._client(), self._prefix
        names = [prefix + key for key in keys]
        found = await (client.mget_nonatomic(names) if self._cluster else client.mget(names))
        return list(found)

    async def asave_many(self, entries: Sequence[tuple[str, bytes]], seconds: float | None) -> None:
        """Write every (key, bytes) with its TTL in the same command, in one round trip."""
        if not entries:
            return
        client, prefix, px = self._client(), self._prefix, expiry_ms(seconds)
        try:
            if len(entries) == 1:
                await client.set(prefix + entries[0][0], entries[0][1], px=px)
                return
            pipe = client.pipeline() if self._cluster else client.pipeline(transaction=False)
            for key, blob in entries:
                pipe.set(prefix + key, blob, px=px)
            await pipe.execute()
        finally:
            self._forget([key for key, _ in entries])

    async def adelete_many(self, keys: Sequence[str]) -> int:
        """Remove ``keys``; how many were there."""
        if not keys:
            return 0
        try:
            return int(await self._client().unlink(*[self._prefix + key for key in keys]))
        finally:
            self._forget(keys)

    async def aclear(self) -> None:
        """Remove every key in the store's namespace (and nothing else)."""
        client = self._client()
        batch: list[bytes] = []
        async for name in client.scan_iter(match=namespace_pattern(self._prefix), count=1000):
            batch.append(name)
            if len(batch) >= _CLEAR_BATCH:
                await client.unlink(*batch)
                batch.clear()
        if batch:
            await client.unlink(*batch)
        cache = self._store.client_cache
        if cache is not None:
            cache.forget_all()

    async def aclose(self) -> None:
        """Close the calling event loop's client and its connections (the next call opens another)."""
        with self._lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def _forget(self, keys: Sequence[str]) -> None:
        # This process's client-side copies must not outlive a write made here (see redis_tracking).
        cache = self._store.client_cache
        if cache is not None:
            cache.forget(keys)
