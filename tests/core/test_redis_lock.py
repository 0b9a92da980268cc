"""RedisLock's blocking and async calls against the real Redis and a private one that is killed."""

from __future__ import annotations

import ast
import asyncio
import pathlib
import threading
import time
from typing import Any

import pytest
import redis

import datapipelines
import datapipelines.flight
from datapipelines.breaker import CircuitBreaker
from datapipelines.errors import ConfigurationError
from datapipelines.redis.lock import RedisLock
from tests.support.resilience import RedisServer, private_redis

__all__ = ["private_redis"]  # a fixture, used by name


def test_redis_lock_is_reached_lazily_from_its_old_homes() -> None:
    assert datapipelines.RedisLock is RedisLock
    assert datapipelines.flight.RedisLock is RedisLock
    with pytest.raises(AttributeError, match="no attribute 'Nothing'"):
        datapipelines.flight.Nothing  # noqa: B018


def test_the_flight_module_imports_no_redis() -> None:
    tree = ast.parse(pathlib.Path(datapipelines.flight.__file__).read_text(encoding="utf-8"))
    imported = [
        name
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in ([alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module])
    ]
    assert imported and not [name for name in imported if name and "redis" in name]


def lock_for(url: str, namespace: str, **options: Any) -> RedisLock:
    return RedisLock(url=url, namespace=namespace, **options)


def test_async_and_blocking_callers_exclude_each_other(redis_url: str, redis_namespace: str) -> None:
    lock = lock_for(redis_url, redis_namespace)
    client = redis.Redis.from_url(redis_url)

    async def main() -> None:
        token = await lock.aacquire("k")
        assert token
        assert await lock.aacquire("k") is None
        assert lock.acquire("k") is None  # the blocking side sees the same key
        assert await lock.aheld("k") and lock.held("k")
        await lock.arelease("k", "a token that is not the holder's")
        assert client.get(f"{redis_namespace}:k") == token.encode()
        await lock.arelease("k", token)
        assert not await lock.aheld("k")
        blocking = lock.acquire("k")
        assert blocking and await lock.aacquire("k") is None
        lock.release("k", blocking)
        await lock.aclose()

    asyncio.run(main())
    assert client.pttl(f"{redis_namespace}:k") == -2  # gone
    client.close()


def test_an_async_lock_expires_after_its_ttl(redis_url: str, redis_namespace: str) -> None:
    lock = lock_for(redis_url, redis_namespace, ttl=0.3)

    async def main() -> None:
        assert await lock.aacquire("k")
        ttl = await lock._for_loop()[0].pttl(f"{redis_namespace}:k")
        assert 0 < ttl <= 300
        await asyncio.sleep(0.4)
        assert await lock.aacquire("k")
        await lock.aclose()

    asyncio.run(main())


def test_a_holder_cancelled_in_its_release_still_releases(redis_url: str, redis_namespace: str) -> None:
    lock = lock_for(redis_url, redis_namespace)

    async def holder(held: asyncio.Event) -> None:
        token = await lock.aacquire("k")
        assert token
        held.set()
        try:
            await asyncio.sleep(30)
        finally:
            await lock.arelease("k", token)

    async def main() -> None:
        held = asyncio.Event()
        task = asyncio.ensure_future(holder(held))
        await held.wait()
        task.cancel()  # out of its sleep and into its release...
        await asyncio.sleep(0)
        task.cancel()  # ...and cancelled again there
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 5
        while await lock.aheld("k"):
            assert time.monotonic() < deadline, "the cancelled holder never released"
            await asyncio.sleep(0.01)
        await lock.aclose()

    asyncio.run(main())


def test_await_value_returns_the_value_once_the_holder_writes_it(
    redis_url: str, redis_namespace: str
) -> None:
    lock = lock_for(redis_url, redis_namespace, poll=0.01)
    values: dict[str, str] = {}
    missing = object()

    async def found() -> Any:
        return values.get("k", missing)

    async def main() -> None:
        token = lock.acquire("k")  # another process, say
        assert token
        asyncio.get_running_loop().call_later(0.1, values.__setitem__, "k", "v")
        assert await lock.await_value("k", found, missing) == "v"
        # The holder went away without a value: the waiter is told to fetch itself.
        del values["k"]
        asyncio.get_running_loop().call_later(0.1, lock.release, "k", token)
        assert lock.acquire("k") is None
        assert await lock.await_value("k", found, missing) is missing
        await lock.aclose()

    asyncio.run(main())


def test_await_value_gives_up_after_wait_timeout(redis_url: str, redis_namespace: str) -> None:
    lock = lock_for(redis_url, redis_namespace, poll=0.01, wait_timeout=0.2)
    missing = object()

    async def nothing() -> Any:
        return missing

    async def main() -> float:
        assert await lock.aacquire("k")
        started = time.monotonic()
        assert await lock.await_value("k", nothing, missing) is missing
        await lock.aclose()
        return time.monotonic() - started

    assert 0.2 <= asyncio.run(main()) < 2


def test_one_lock_serves_loops_in_sequence_and_threads_with_their_own(
    redis_url: str, redis_namespace: str
) -> None:
    lock = lock_for(redis_url, redis_namespace)

    async def take_and_release(key: str) -> Any:
        token = await lock.aacquire(key)
        assert token
        await lock.arelease(key, token)
        client = lock._for_loop()[0]
        assert lock._for_loop()[0] is client  # one client per loop...
        await lock.aclose()
        return client

    clients = [asyncio.run(take_and_release("seq")) for _ in range(2)]
    assert clients[0] is not clients[1]  # ...and each loop its own
    threaded: list[Any] = []
    threads = [
        threading.Thread(target=lambda n=n: threaded.append(asyncio.run(take_and_release(f"t{n}"))))
        for n in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(threaded) == 2 and threaded[0] is not threaded[1]
    assert not lock.held("seq") and not lock.held("t0") and not lock.held("t1")


def test_a_lock_given_only_a_blocking_client_names_what_async_use_needs(redis_url: str) -> None:
    lock = RedisLock(redis.Redis.from_url(redis_url))

    async def main() -> None:
        with pytest.raises(ConfigurationError, match="url= or async_client="):
            await lock.aacquire("k")

    asyncio.run(main())


def test_a_killed_redis_fails_no_async_caller_and_the_breaker_is_shared(private_redis: RedisServer) -> None:
    breaker = CircuitBreaker(failures=1, cooldown=0.3)
    lock = RedisLock(url=private_redis.url, namespace="dp-test-lock", socket_timeout=0.2, breaker=breaker)

    async def main() -> None:
        token = await lock.aacquire("k")
        assert token
        private_redis.kill()
        await lock.arelease("k", token)  # unanswered: the lock would expire by itself
        assert breaker.state == "open"
        started = time.monotonic()
        assert await lock.aacquire("k") == "" and lock.acquire("k") == ""  # go ahead unlocked
        assert not await lock.aheld("k")
        assert time.monotonic() - started < 0.1, "an open breaker must not wait for Redis"
        private_redis.start()
        await asyncio.sleep(0.35)
        token = await lock.aacquire("k")
        assert token and breaker.state == "closed"
        await lock.arelease("k", token)
        assert not lock.held("k")
        await lock.aclose()

    asyncio.run(main())
