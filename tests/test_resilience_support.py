"""Helpers for the resilience and invalidation tests: a private redis-server, a counting source.

This module holds no tests.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from datapipelines import DataSource, NotFoundError


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server of our own on a free loopback port, which a test may kill and start again."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_until(self.answers, timeout=10, what=f"redis-server on port {self.port} to answer")

    def answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            if self.process is not None and self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise AssertionError(f"redis-server on port {self.port} exited: {error}") from None
            return False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: no goodbye to its clients) and wait until it is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None


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


class SilentRedis:
    """A server on a free loopback port that accepts connections, reads, and never answers."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.connections = 0
        self._open: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, name="silent-redis", daemon=True).start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            self._open.append(connection)  # kept open, never read from, never answered

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for connection in self._open:
            connection.close()


@pytest.fixture
def silent_redis() -> Iterator[SilentRedis]:
    """A Redis that accepts connections and stays silent: every command runs into its socket timeout."""
    server = SilentRedis()
    try:
        yield server
    finally:
        server.close()
