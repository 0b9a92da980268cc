"""RedisStore: the shared network tier, on redis-py (a server or a cluster)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import RedisCluster

from datapipelines.errors import ConfigurationError

from .encoded import EncodedStore
from .redis_tracking import ClientSideCache
from .serializers import Serializer

_CLEAR_BATCH = 500
# What fetch answers for a key of another Redis type: bytes no entry starts with, so a damaged one.
_OTHER_TYPE = b"<a key of another Redis type>"
_GLOB_SPECIALS = "\\*?[]"


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: safe to log and repr."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


class RedisStore(EncodedStore):
    """Serialized values in Redis under ``<namespace>:<key>``, shared by every process.

    Connects with ``url`` (``redis://``, ``rediss://`` for TLS, ``unix://``;
    ``redis://:password@host:6379/0``), or uses ``client`` (a ``redis.Redis`` or
    ``RedisCluster`` you configured; ``cluster=True`` builds a cluster client from
    ``url``). ``socket_timeout`` and ``socket_connect_timeout`` (seconds) bound a
    slow or unreachable server; ``client_options`` go to ``from_url``.

    Each value is written with its TTL in the same command (``SET ... PX``) and
    also carries its deadline, checked against ``clock``, so an expired entry is
    never returned. Batches are one round trip: ``MGET`` to read, a pipeline of
    ``SET ... PX`` to write. Values go through ``serializer`` (default MessagePack into
    the requested type, or HMAC-signed pickle when ``secret`` or env ``DATAPIPELINES_SECRET``
    is set).

    ``client_side=True`` keeps up to ``client_side_maxsize`` decoded values in
    this process while Redis tracks them (see :mod:`.redis_tracking`): a repeated
    hit costs a memory hit, and another client's change drops the copy.
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: Any = None,
        namespace: str = "datapipelines",
        expirations: Mapping[Any, Any] | None = None,
        serializer: Serializer | str | None = None,
        secret: str | bytes | None = None,
        default_expiry: Any = None,
        types: Iterable[Any] | None = None,
        cluster: bool = False,
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 2.0,
        clock: Callable[[], float] = time.time,
        client_side: bool = False,
        client_side_maxsize: int = 10_000,
        **client_options: Any,
    ) -> None:
        super().__init__(
            serializer=serializer, secret=secret, clock=clock,
            types=types, expirations=expirations, default_expiry=default_expiry,
        )  # fmt: skip
        if not isinstance(namespace, str) or not namespace or any(c.isspace() for c in namespace):
            raise ConfigurationError(f"RedisStore namespace must be a non-empty word, got {namespace!r}")
        self.namespace = namespace
        self._prefix = namespace + ":"
        self._owns_client = client is None
        self.url: str | None = None
        if client is None:
            self.url = redact_url(url)
            client = self._connect(url, cluster, socket_timeout, socket_connect_timeout, client_options)
        self.client = client  # before any error: repr names the client's type
        if client.get_connection_kwargs().get("decode_responses"):
            raise ConfigurationError(
                f"{self!r} needs a client with decode_responses=False: it stores bytes, not text"
            )
        self._cluster = isinstance(client, RedisCluster)
        self._mget = client.mget_nonatomic if self._cluster else client.mget
        self.client_cache: ClientSideCache | None = None
        if client_side:
            if self._cluster:
                self.close()
                raise ConfigurationError(f"{self!r}: client_side=True tracks one server, not a cluster")
            self.client_cache = ClientSideCache(self, client_side_maxsize, heartbeat=socket_timeout)

    @staticmethod
    def _connect(url: str, cluster: bool, timeout: float, connect_timeout: float, options: dict) -> Any:
        factory = RedisCluster.from_url if cluster else redis.Redis.from_url
        try:
            return factory(url, socket_timeout=timeout, socket_connect_timeout=connect_timeout, **options)
        except ValueError as error:
            raise ConfigurationError(f"Bad Redis URL {redact_url(url)!r}: {error}") from error

    def __repr__(self) -> str:
        where = self.url if self.url is not None else type(getattr(self, "client", None)).__name__
        return f"RedisStore({where!r}, namespace={self.namespace!r})"

    # -- reads through the client-side cache, when there is one ------------------------------
    def lookup(self, type_: Any, query: Mapping[str, Any]) -> Any:
        cache = self.client_cache
        return super().lookup(type_, query) if cache is None else cache.lookup(type_, query)

    def lookup_entry(self, type_: Any, query: Mapping[str, Any]) -> Any:
        cache = self.client_cache
        return super().lookup_entry(type_, query) if cache is None else cache.lookup_entry(type_, query)

    def lookup_fresh(self, type_: Any, query: Mapping[str, Any], max_age: float) -> Any:
        cache = self.client_cache
        if cache is None:
            return super().lookup_fresh(type_, query, max_age)
        return cache.lookup_fresh(type_, query, max_age)

    def lookup_many_entries(self, type_: Any, queries: Sequence[Mapping[str, Any]]) -> list[Any]:
        cache = self.client_cache
        if cache is None:
            return super().lookup_many_entries(type_, queries)
        return cache.lookup_many_entries(type_, queries)

    # -- the five byte-level methods ----------------------------------------------------------------
    def fetch(self, key: str) -> bytes | None:
        try:
            return self.client.get(self._prefix + key)  # type: ignore[no-any-return]
        except redis.ResponseError as error:
            if not str(error).startswith("WRONGTYPE"):
                raise
            # A hash, list, ... under our namespace: a damaged entry (dropped, a miss), not a failing tier.
            return _OTHER_TYPE

    def fetch_many(self, keys: Sequence[str]) -> list[bytes | None]:
        prefix = self._prefix
        return self._mget([prefix + key for key in keys])  # type: ignore[no-any-return]

    def save_many(self, entries: Sequence[tuple[str, bytes]], seconds: float | None) -> None:
        # PX takes whole milliseconds; round up so a short expiry never becomes "now".
        px = None if seconds is None else max(1, math.ceil(seconds * 1000))
        prefix = self._prefix
        try:
            if len(entries) == 1:
                key, blob = entries[0]
                self.client.set(prefix + key, blob, px=px)
                return
            pipe = self.client.pipeline() if self._cluster else self.client.pipeline(transaction=False)
            for key, blob in entries:
                pipe.set(prefix + key, blob, px=px)
            pipe.execute()
        finally:
            # After the write, so that no read under way keeps what was there before.
            if self.client_cache is not None:
                self.client_cache.forget([key for key, _ in entries])

    def delete_many(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        try:
            return int(self.client.unlink(*[self._prefix + key for key in keys]))
        finally:
            if self.client_cache is not None:
                self.client_cache.forget(keys)

    def clear(self) -> None:
        """Remove every key in this store's namespace (and nothing else)."""
        pattern = "".join("\\" + c if c in _GLOB_SPECIALS else c for c in self._prefix) + "*"
        batch: list[bytes] = []
        try:
            for key in self.client.scan_iter(match=pattern, count=1000):
                batch.append(key)
                if len(batch) >= _CLEAR_BATCH:
                    self.client.unlink(*batch)
                    batch.clear()
            if batch:
                self.client.unlink(*batch)
        finally:
            if self.client_cache is not None:
                self.client_cache.forget_all()

    def close(self) -> None:
        """Close the connections of a client this store created (a client you passed stays open).

        A client-side cache stops tracking and drops its copies either way.
        """
        if self.client_cache is not None:
            self.client_cache.close()
        if self._owns_client:
            if self._cluster:
                # RedisCluster.close() leaves the nodes' sockets open: disconnect their pools first.
                self.client.disconnect_connection_pools()
            self.client.close()
