"""Helpers for the resilience and invalidation tests: a private redis-server, a counting source.

This module holds no tests.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from datapipelines import DataSource, NotFoundError
from datapipelines.redis.testing import RedisServer, SilentRedis, free_port

__all__ = ["RedisServer", "SilentRedis", "free_port"]  # imported by the tests from here


@dataclasses.dataclass(frozen=True)
class Reading:
    id: int
    value: str


class CountingSource(DataSource):
    """Answers Reading queries ``{"id": n}``; counts calls; can be told to fail, to miss or to wait."""

    def __init__(self, name: str = "origin", delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay
        self.calls = 0
        self.version = 1
        self.error: Exception | None = None
        self.missing: set[int] = set()
        self.release: threading.Event | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CountingSource({self.name})"

    @property
    def provides(self) -> Any:
        return {Reading}

    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        with self._lock:
            self.calls += 1
        if self.release is not None:
            assert self.release.wait(30), "the test never released the source"
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if query["id"] in self.missing:
            raise NotFoundError(type=type, query=query, tried=[repr(self)])
        return Reading(query["id"], f"v{self.version}")

    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        raise NotFoundError()


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
    """Poll ``predicate`` every millisecond until it is truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.001)


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A fresh redis-server started by the test; fails under CI if the binary is missing, else skips."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not on PATH: install Redis (apt-get install redis-server) to run this test"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def silent_redis() -> Iterator[SilentRedis]:
    """A Redis that accepts connections and stays silent: every command runs into its socket timeout."""
    server = SilentRedis()
    try:
        yield server
    finally:
        server.close()
