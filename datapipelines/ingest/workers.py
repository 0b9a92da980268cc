"""Where a step's function runs: inline in the step's thread, or in spawned worker processes.

A :class:`WorkerPool` hands batches to its processes and gets one result per
file back. A batch is only done when its result arrives: when a worker dies
(SIGKILL, OOM, a crash in C code) or leaves after SIGTERM, every batch it had
not answered comes back to the caller to hand to another, and the worker is
replaced. This is the seam a distributed queue plugs into: anything with
``start``, ``free``, ``send``, ``wait`` and ``stop`` can run a step's work.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..errors import ConfigurationError
from .files import IncomingFile

LOGGER = logging.getLogger(__name__)

Outcome = tuple[bool, "str | None"]  # (succeeded, error text)
Finished = tuple[list[IncomingFile], list[Outcome], float]  # a batch, one outcome per file, seconds taken
# A batch never answered, and whether a worker died running it: True, or how many deliveries a queue
# counted without an answer (a broker that keeps its own delivery count).
HandedBack = tuple[list[IncomingFile], int]


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def run_function(function: Callable[..., Any], batch: Sequence[IncomingFile], batched: bool) -> list[Outcome]:
    """Call a step's function on ``batch``; one (ok, error) per file. False or an exception is a failure."""
    if not batched:
        outcomes: list[Outcome] = []
        for file in batch:
            try:
                result = function(file)
            except Exception as error:
                outcomes.append((False, describe(error)))
                continue
            outcomes.append((True, None) if result is not False else (False, "the step returned False"))
        return outcomes
    try:
        result = function(list(batch))
    except Exception as error:
        return [(False, describe(error))] * len(batch)
    if result is None or isinstance(result, bool):
        return [(True, None) if result is not False else (False, "the step returned False")] * len(batch)
    results = list(result)
    if len(results) != len(batch):
        error_text = f"the step returned {len(results)} results for {len(batch)} files"
        return [(False, error_text)] * len(batch)
    return [_item_outcome(item) for item in results]


def _item_outcome(item: Any) -> Outcome:
    if isinstance(item, BaseException):
        return False, describe(item)
    if item is False:
        return False, "the step returned False"
    return True, None


class WorkQueue(Protocol):
    """What runs a step's batches elsewhere (worker processes here; a broker across machines)."""

    def start(self) -> None: ...

    def free(self) -> int:
        """How many more batches it takes now."""
        ...

    def send(self, batch: list[IncomingFile]) -> None: ...

    def wait(self, timeout: float, wake: int) -> tuple[list[Finished], list[HandedBack]]:
        """(finished batches, batches handed back), waiting at most ``timeout`` seconds or until the
        file descriptor ``wake`` is readable."""
        ...

    def busy(self) -> int:
        """Batches sent and not answered."""
        ...

    def stop(self, timeout: float) -> tuple[list[Finished], list[list[IncomingFile]]]:
        """Let each worker finish its current batch and stop: (finished, never started)."""
        ...


def _worker_main(connection: Any, function: Callable[..., Any], batched: bool) -> None:
    """A worker process: answer batches until told to stop; SIGTERM ends it after the current batch."""
    state = {"busy": False, "stop": False}

    def on_term(signum: int, frame: Any) -> None:
        if not state["busy"]:
            raise SystemExit(0)
        state["stop"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while not state["stop"]:
        try:
            message = connection.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        number, batch = message
        state["busy"] = True
        started = time.perf_counter()
        outcomes = run_function(function, batch, batched)
        connection.send((number, outcomes, time.perf_counter() - started))
        state["busy"] = False


class _Worker:
    __slots__ = ("process", "connection", "outstanding")

    def __init__(self, process: Any, connection: Any) -> None:
        self.process = process
        self.connection = connection
        self.outstanding: dict[int, list[IncomingFile]] = {}


class WorkerPool:
    """``workers`` spawned processes running ``function``; each holds up to ``prefetch`` batches."""

    def __init__(
        self, name: str, function: Callable[..., Any], batched: bool, workers: int, prefetch: int = 4
    ) -> None:
        self.name = name
        self.function = function
        self.batched = batched
        self.size = workers
        self.prefetch = prefetch
        self.restarts = 0
        self._workers: list[_Worker] = []
        self._numbers = 0
        self._context = multiprocessing.get_context("spawn")
        self._stopping = False

    def start(self) -> None:
        try:
            pickle.dumps(self.function)
        except Exception as error:
            raise ConfigurationError(
                f"Step {self.name!r}: its function must be importable by name to run in worker processes "
                f"(a module-level function, not a lambda or closure): {error}"
            ) from error
        self._workers = [self._spawn() for _ in range(self.size)]

    def _spawn(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main,
            args=(child, self.function, self.batched),
            name=f"ingest-{self.name}",
            daemon=True,
        )
        process.start()
        child.close()
        return _Worker(process, parent)

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def free(self) -> int:
        return sum(max(0, self.prefetch - len(w.outstanding)) for w in self._workers)

    def busy(self) -> int:
        return sum(len(w.outstanding) for w in self._workers)

    def send(self, batch: list[IncomingFile]) -> None:
        worker = min(self._workers, key=lambda w: len(w.outstanding))
        self._numbers += 1
        worker.outstanding[self._numbers] = batch
        try:
            worker.connection.send((self._numbers, batch))
        except OSError:
            pass  # it died: wait() notices and hands the batch back

    def wait(self, timeout: float, wake: int) -> tuple[list[Finished], list[HandedBack]]:
        by_connection = {w.connection: w for w in self._workers}
        by_sentinel = {w.process.sentinel: w for w in self._workers}
        ready = multiprocessing.connection.wait([*by_connection, *by_sentinel, wake], timeout)
        done: list[Finished] = []
        returned: list[HandedBack] = []
        dead: list[_Worker] = []
        for item in ready:
            worker = by_connection.get(item)  # type: ignore[call-overload]
            if worker is not None:
                if not self._receive(worker, done):
                    dead.append(worker)
            elif item in by_sentinel:
                dead.append(by_sentinel[item])  # type: ignore[index]
        for worker in dict.fromkeys(dead):
            self._receive(worker, done)
            # The oldest unanswered batch was in hand when it died; the others had not started.
            for position, batch in enumerate(worker.outstanding.values()):
                returned.append((batch, position == 0))
            self._replace(worker)
        return done, returned

    @staticmethod
    def _receive(worker: _Worker, done: list[Any]) -> bool:
        """Collect what ``worker`` sent (a dying worker's last results count); False once it is gone."""
        try:
            while worker.connection.poll():
                number, outcomes, seconds = worker.connection.recv()
                done.append((worker.outstanding.pop(number), outcomes, seconds))
        except (EOFError, OSError):
            return False
        return True

    def _replace(self, worker: _Worker) -> None:
        worker.process.join(1.0)
        worker.connection.close()
        index = self._workers.index(worker)
        if self._stopping:
            del self._workers[index]
            return
        self.restarts += 1
        LOGGER.warning(
            "Worker %d of step %s ended (exit code %s); starting another",
            worker.process.pid,
            self.name,
            worker.process.exitcode,
        )
        self._workers[index] = self._spawn()

    def stop(self, timeout: float) -> tuple[list[Finished], list[list[IncomingFile]]]:
        """Each worker finishes its current batch (SIGTERM); the rest come back. Stragglers are killed."""
        self._stopping = True
        done: list[Finished] = []
        returned: list[list[IncomingFile]] = []
        for worker in self._workers:
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in list(self._workers):
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
        for worker in self._workers:
            self._receive(worker, done)
            returned.extend(worker.outstanding.values())
            worker.connection.close()
        self._workers = []
        return done, returned
