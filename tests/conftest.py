"""Fixtures shared by the test suite: Redis servers and the fake clock (tests/support/clock.py)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from tests.support.clock import FakeClock

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def _server_answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture(scope="session")
def redis_server_answers() -> bool:
    """Whether the Redis at REDIS_URL answers; under CI a silent server fails the run."""
    answers = _server_answers(REDIS_URL)
    if not answers and os.environ.get("CI"):
        pytest.fail(f"CI is set but no Redis answers at {REDIS_URL}")
    return answers


@pytest.fixture(scope="session")
def redis_url(redis_server_answers: bool) -> str:
    """The URL of the real Redis (env REDIS_URL); skips when none answers outside CI."""
    if not redis_server_answers:
        pytest.skip(f"no Redis answers at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def fake_redis_client() -> Iterator[fakeredis.FakeRedis]:
    """A fakeredis client with a server of its own, empty."""
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


@pytest.fixture
def redis_client(redis_server_answers: bool) -> Iterator[redis.Redis]:
    """A client of the real Redis, or of fakeredis when none answers (outside CI)."""
    if redis_server_answers:
        client = redis.Redis.from_url(REDIS_URL)
    else:
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield client
    client.close()


@pytest.fixture
def redis_namespace(redis_server_answers: bool) -> Iterator[str]:
    """A key prefix no other test run uses; its keys are removed from the real Redis afterwards."""
    namespace = f"dp-test-{uuid.uuid4().hex[:12]}"
    yield namespace
    if redis_server_answers:
        with redis.Redis.from_url(REDIS_URL) as client:
            keys = list(client.scan_iter(match=f"{namespace}*", count=1000))
            if keys:
                client.unlink(*keys)


@pytest.fixture
def fake_clock() -> FakeClock:
    """A FakeClock starting at the real time (shared tiers compare deadlines across processes)."""
    return FakeClock()
