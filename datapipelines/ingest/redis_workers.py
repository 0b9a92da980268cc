"""A step's batches run by worker processes anywhere that share a stream engine and the filesystem.

:class:`StreamWorkQueue` (also importable as ``RedisWorkQueue``, its first
name) is the :class:`~datapipelines.ingest.workers.WorkQueue` a step uses
instead of local processes: each batch is one entry of the step's stream (a
:class:`~datapipelines.ingest.stream_queue.StreamQueue` on the engine the URL
names), run by :func:`serve` in any worker process, whose outcome comes back on
the step's own reply stream. The entry is acknowledged only after the step has
settled the outcome (moved the file on, scheduled its retry or given it up), so
a worker or a step process that dies first leaves work to be done again, never
lost. Only the function runs elsewhere; a :class:`~datapipelines.ingest.
distributed.DistributedStep` runs the whole step there.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from .distributed import file_from_json, file_to_json
from .files import IncomingFile
from .redis_queue import DEFAULT_PREFIX
from .stream_queue import StreamQueue, open_stream_queue
from .workers import Finished, HandedBack, Outcome, run_function

LOGGER = logging.getLogger(__name__)

__all__ = ["RedisWorkQueue", "StreamWorkQueue", "file_from_json", "file_to_json", "serve"]


def _batch_payload(batch: list[IncomingFile], reply: str) -> str:
    # ASCII JSON keeps names that are not UTF-8 (surrogate escapes) intact across machines.
    return json.dumps({"reply": reply, "files": [file_to_json(f) for f in batch]})


def serve(
    url: str,
    step: str,
    function: Callable[..., Any],
    *,
    batched: bool = False,
    prefix: str = DEFAULT_PREFIX,
    consumer: str | None = None,
    lease: float = 30.0,
    max_deliveries: int = 5,
    parent: int | None = None,
) -> None:
    """Run ``function`` on the step's batches until SIGTERM, which ends it after the batch in hand, or
    until the process ``parent`` (a local step that started it) is gone."""
    state = {"stop": False}
    signal.signal(signal.SIGTERM, lambda signum, frame: state.update(stop=True))
    queue = open_stream_queue(
        url, step, prefix=prefix, consumer=consumer, lease=lease, max_deliveries=max_deliveries
    )
    queue.start()
    replies: dict[str, StreamQueue] = {}

    def answer(reply: str, message: dict[str, Any]) -> None:
        if reply not in replies:
            replies[reply] = open_stream_queue(url, reply, prefix=prefix, max_length=1_000_000)
        replies[reply].publish(json.dumps(message))

    while not state["stop"] and (parent is None or os.getppid() == parent):
        entries, dead = queue.read(count=1, block=0.5)
        for entry in dead:
            answer(json.loads(entry.payload)["reply"], {"id": entry.id, "dead": entry.deliveries - 1})
        for entry in entries:
            payload = json.loads(entry.payload)
            batch = [file_from_json(f) for f in payload["files"]]
            started = time.perf_counter()
            outcomes = run_function(function, batch, batched)
            seconds = time.perf_counter() - started
            answer(payload["reply"], {"id": entry.id, "outcomes": outcomes, "seconds": seconds})
    for reply_queue in [queue, *replies.values()]:
        reply_queue.close()


class StreamWorkQueue:
    """A step's work on the stream engine at ``url``; ``workers`` local :func:`serve` processes (0: only
    remote ones). Give the step the same ``max_deliveries``: a batch delivered that often without an
    answer is handed back as in hand that many times, and the step gives its files up."""

    def __init__(
        self,
        url: str,
        step: str,
        function: Callable[..., Any],
        *,
        batched: bool = False,
        workers: int = 2,
        prefix: str = DEFAULT_PREFIX,
        max_length: int = 10_000,
        lease: float = 30.0,
        max_deliveries: int = 5,
        prefetch: int = 8,
    ) -> None:
        self.url = url
        self.step = step
        self.function = function
        self.batched = batched
        self.workers = workers
        self.prefix = prefix
        self.lease = lease
        self.max_deliveries = max_deliveries
        self.prefetch = prefetch
        self.restarts = 0
        self.queue = open_stream_queue(
            url, step, prefix=prefix, max_length=max_length, lease=lease, max_deliveries=max_deliveries
        )
        self.reply = f"{step}:reply:{self.queue.consumer}"
        self.replies = open_stream_queue(url, self.reply, prefix=prefix, max_length=1_000_000)
        self._sent: dict[str, list[IncomingFile]] = {}
        self._settled: list[str] = []
        self._processes: list[Any] = []
        self._context = multiprocessing.get_context("spawn")
        self._stopping = False

    def start(self) -> None:
        self._stopping = False
        self.queue.start()
        self.replies.start()
        self._processes = [self._spawn() for _ in range(self.workers)]

    def _spawn(self) -> Any:
        process = self._context.Process(
            target=serve,
            args=(self.url, self.step, self.function),
            kwargs={
                "batched": self.batched,
                "prefix": self.prefix,
                "lease": self.lease,
                "max_deliveries": self.max_deliveries,
                "parent": os.getpid(),
            },
            name=f"ingest-{self.step}",
            daemon=True,
        )
        process.start()
        return process

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes]

    def free(self) -> int:
        return max(0, self.prefetch - len(self._sent))

    def busy(self) -> int:
        return len(self._sent)

    def send(self, batch: list[IncomingFile]) -> None:
        self._sent[self.queue.publish(_batch_payload(batch, self.reply))] = batch

    def wait(self, timeout: float, wake: int) -> tuple[list[Finished], list[HandedBack]]:
        # The step settled what the last call returned before calling again: its effects are complete.
        self._ack_settled()
        self._replace_dead_workers()
        entries, _dead = self.replies.read(count=1000, block=min(timeout, 0.05))
        done: list[Finished] = []
        returned: list[HandedBack] = []
        for entry in entries:
            message = json.loads(entry.payload)
            batch = self._sent.pop(message["id"], None)
            if batch is None:
                continue  # a second answer for a redelivered batch: the first one counted
            self._settled.append(message["id"])
            if "dead" in message:
                returned.append((batch, int(message["dead"])))
                continue
            outcomes: list[Outcome] = [(ok, error) for ok, error in message["outcomes"]]
            done.append((batch, outcomes, float(message["seconds"])))
        self.replies.ack(*(entry.id for entry in entries))
        return done, returned

    def _ack_settled(self) -> None:
        if self._settled:
            self.queue.ack(*self._settled)
            self._settled = []

    def _replace_dead_workers(self) -> None:
        for index, process in enumerate(self._processes):
            if not self._stopping and not process.is_alive():
                process.join()
                self.restarts += 1
                LOGGER.warning(
                    "Worker %d of step %s ended (exit code %s); starting another",
                    process.pid,
                    self.step,
                    process.exitcode,
                )
                self._processes[index] = self._spawn()

    def stop(self, timeout: float) -> tuple[list[Finished], list[list[IncomingFile]]]:
        """Workers finish their batch in hand; batches never answered are taken off the stream (their
        files stay in the work folder, which is the truth, for the next start)."""
        self._stopping = True
        for process in self._processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        done: list[Finished] = []
        while self._sent and time.monotonic() < deadline:
            finished, _returned = self.wait(0.05, -1)
            done.extend(finished)
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        self._processes = []
        unanswered = list(self._sent.values())
        self._settled.extend(self._sent)
        self._sent = {}
        self._ack_settled()
        self.replies.delete()
        self.replies.close()
        return done, unanswered


RedisWorkQueue = StreamWorkQueue  # its name before other engines came
