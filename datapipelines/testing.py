"""A tiny threaded HTTP server on 127.0.0.1 for tests, benchmarks and the demo.

    with LocalServer({"/weather": lambda hit: {"city": hit.params["city"], "temp": 21.5}}) as server:
        HttpSource(server.url).get(RawResponse, {"path": "/weather", "params": {"city": "Oslo"}})

A route answers with a JSON-able value, or a :class:`Reply` for full control
(status, raw body, headers, delay). ``server.script(path, reply, ...)`` queues
replies that are used once each, before the route, for retry scenarios.
Every request is kept in ``server.hits``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Hit:
    """One request the server received."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass(frozen=True)
class Reply:
    """A full answer: ``body`` bytes, str or a JSON-able value; ``delay`` seconds before answering."""

    status: int = 200
    body: Any = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


Route = Callable[[Hit], Any]


def _encode(body: Any) -> tuple[bytes, str]:
    if isinstance(body, bytes):
        return body, "application/octet-stream"
    if isinstance(body, str):
        return body.encode("utf-8"), "text/plain; charset=utf-8"
    return json.dumps(body).encode("utf-8"), "application/json"


class _Server(ThreadingHTTPServer):
    # Async clients connect by the hundred at once: the default backlog of 5 drops their
    # SYNs, and each dropped one waits a second for its retransmission.
    request_queue_size = 1024


class LocalServer:
    """Serves ``routes`` (path -> function of the Hit, or a constant) on a free loopback port."""

    def __init__(self, routes: Mapping[str, Route | Any] | None = None) -> None:
        self.routes: dict[str, Route | Any] = dict(routes or {})
        self.hits: list[Hit] = []
        self._scripts: dict[str, deque[Reply]] = {}
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body leave in one write, with no Nagle delay: keep-alive calls take
            # well under a millisecond instead of waiting ~40 ms for a delayed ACK.
            wbufsize = -1
            disable_nagle_algorithm = True

            def _answer(self) -> None:
                split = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                hit = Hit(
                    method=self.command,
                    path=split.path,
                    params={k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()},
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                    at=time.monotonic(),
                )
                reply = server._reply(hit)
                if reply.delay:
                    time.sleep(reply.delay)
                payload, content_type = _encode(reply.body)
                self.send_response(reply.status)
                headers = {"Content-Type": content_type, **reply.headers, "Content-Length": str(len(payload))}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test): nothing to answer

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: tests and the demo print what matters themselves

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` with ``replies``, one each, before its route."""
        with self._lock:
            self._scripts.setdefault(path, deque()).extend(replies)

    def hits_for(self, path: str) -> list[Hit]:
        with self._lock:
            return [hit for hit in self.hits if hit.path == path]

    def _reply(self, hit: Hit) -> Reply:
        with self._lock:
            self.hits.append(hit)
            queued = self._scripts.get(hit.path)
            if queued:
                return queued.popleft()
        route = self.routes.get(hit.path)
        if route is None:
            return Reply(404, {"error": f"no route {hit.path}"})
        answer = route(hit) if callable(route) else route
        return answer if isinstance(answer, Reply) else Reply(200, answer)

    def start(self) -> LocalServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="LocalServer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the port (again is a no-op)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
