"""Redis servers that fail on purpose, for tests and benchmarks of the Redis tiers.

:class:`RedisServer` runs a private ``redis-server`` on a free loopback port
that can be killed (SIGKILL) and started again on the same port;
:class:`SilentRedis` accepts connections and never answers, so every command
runs into its socket timeout::

    server = RedisServer(shutil.which("redis-server"))
    server.start()
    ...
    server.kill()
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import redis


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A redis-server of our own on a free loopback port, which may be killed and started again."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (no persistence) and wait until it answers."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--daemonize", "no"]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not answer within {timeout}s")
            time.sleep(0.005)

    def answers(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2) as client:
                return bool(client.ping())
        except (redis.RedisError, OSError):
            if self.process is not None and self.process.poll() is not None:
                error = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"redis-server on port {self.port} exited: {error}") from None
            return False

    def kill(self) -> None:
        """Kill the server at once (SIGKILL: no goodbye to its clients) and wait until it is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            if self.process.stderr:
                self.process.stderr.close()
            self.process = None


class SilentRedis:
    """A server on a free loopback port that accepts connections and never answers.

    ``connections`` counts the connections accepted: redis-py drops a
    connection that timed out, so it is the number of commands that timed out.
    """

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
