"""Step: a sink that runs a function on each incoming file, with retries, a failure policy and workers."""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError
from .files import (
    ATTEMPT,
    DUE,
    STEP_COUNTER,
    TAGS_SUFFIX,
    IncomingFile,
    iso,
    remove_quietly,
    tags_to_json,
    work_name,
    write_json_atomic,
)
from .policies import NO_RETRY, BatchPolicy, FailurePolicy, RetryPolicy, finish
from .stats import Counters, tracker_for
from .targets import Target
from .workers import Outcome, WorkerPool, WorkQueue, run_function

LOGGER = logging.getLogger(__name__)

DEFAULT_STEP_LIMIT = 1000


class Step(Target):
    """Run ``function`` on every file handed to this step.

    ``function(file)`` (or ``function(files)`` with ``batch=``, returning one
    result per file, or one for all) succeeds unless it raises or returns False.
    A failed file is tried again per ``retry`` (the schedule is kept on disk, in
    the step's work folder, so it survives a restart), then ``failure`` applies
    (default: keep it with its tags in ``<work>/.trash/<name>``). A success goes
    on to ``then`` (another target) or, without one, the file is deleted.

    ``workers=0`` runs the function in this step's own thread; ``workers=N`` in
    N spawned processes, restarted when they die; a file whose worker died more
    than ``max_deliveries`` times is given up (a poison file). A file entering
    steps more than ``step_limit`` times (a routing loop) is given up too.
    """

    def __init__(
        self,
        name: str,
        function: Callable[..., Any],
        *,
        retry: RetryPolicy = NO_RETRY,
        failure: FailurePolicy | None = None,
        batch: BatchPolicy | None = None,
        workers: int = 0,
        then: Target | None = None,
        step_limit: int = DEFAULT_STEP_LIMIT,
        max_deliveries: int = 5,
        queue: WorkQueue | None = None,
    ) -> None:
        if not name or "/" in name or name.startswith(".") or "__" in name:
            raise ConfigurationError(f"Step name {name!r} must be a plain folder name without '__'")
        if not callable(function):
            raise ConfigurationError(f"Step {name!r}: function must be callable, got {function!r}")
        if workers < 0:
            raise ConfigurationError(f"Step {name!r}: workers must be >= 0, got {workers}")
        self.name = name
        self.function = function
        self.retry = retry
        self.failure = failure
        self.batch = batch
        self.workers = workers
        self.then = then
        self.step_limit = step_limit
        self.max_deliveries = max_deliveries
        self._queue = queue
        self.counters = Counters(
            "received", "processed", "succeeded", "failed", "retried", "dead", "reprocessed", "looped"
        )
        self._pending: deque[IncomingFile] = deque()
        self._delayed: list[tuple[float, int, IncomingFile]] = []
        self._sequence = itertools.count()
        self._deliveries: dict[str, int] = {}
        self._first_seen: dict[str, float] = {}
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = -1, -1
        self._sleeping = False
        self._running = 0
        self._thread: threading.Thread | None = None
        self._stopping = False

    def __repr__(self) -> str:
        return f"Step({self.name!r})"

    def targets(self) -> list[Target]:
        return [self.then] if self.then is not None else []

    # -- intake -------------------------------------------------------------------------
    def handle(self, file: IncomingFile) -> None:
        counter = int(file.tags.get(STEP_COUNTER, "-1")) + 1
        file = file.with_tags(
            {STEP_COUNTER: counter, f"{counter}.{self.name}.enter_step": iso(time.time())}, attempt=1
        )
        self.counters.add("received")
        if counter > self.step_limit:
            self.counters.add("looped")
            self.counters.add("dead")
            self._give_up(file, f"step_limit {self.step_limit} reached (a routing loop?)", None)
            return
        self._enqueue(file)

    def resume(self, file: IncomingFile, tags: dict[str, str] | None) -> None:
        """A file found in this step's work folder at start: due again at its saved time, or now."""
        self.counters.add("reprocessed")
        if tags is None:
            self._enqueue(file)
            return
        file = file.with_tags({}, attempt=int(tags.get(ATTEMPT, "1")))
        due = float(tags.get(DUE, "0"))
        self._schedule(file, max(0.0, due - time.time()))

    def _enqueue(self, file: IncomingFile) -> None:
        self._ensure_started()
        with self._lock:
            self._pending.append(file)
            sleeping = self._sleeping
        if sleeping:
            self._wake()

    def _schedule(self, file: IncomingFile, delay: float) -> None:
        self._ensure_started()
        with self._lock:
            heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._sequence), file))
            sleeping = self._sleeping
        if sleeping:
            self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"!")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the thread is awake anyway

    # -- lifetime -----------------------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._thread is None:
            self.start()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._stopping = False
            self._wake_read, self._wake_write = os.pipe()
            os.set_blocking(self._wake_read, False)
            os.set_blocking(self._wake_write, False)
            if self._queue is None and self.workers:
                self._queue = WorkerPool(self.name, self.function, self.batch is not None, self.workers)
            if self._queue is not None:
                self._queue.start()
            self._thread = threading.Thread(target=self._run, name=f"ingest-step-{self.name}", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batches in hand; files not started stay in the work folder for the next start."""
        thread = self._thread
        if thread is None:
            return
        self._stopping = True
        self._wake()
        thread.join(timeout)
        if self._queue is not None:
            done, _returned = self._queue.stop(timeout)
            for batch, outcomes, seconds in done:
                self._settle(batch, outcomes, seconds)
        os.close(self._wake_read)
        os.close(self._wake_write)
        with self._lock:
            # Left on disk (a retry with its sidecar): the next start's reconcile takes them up.
            self._pending.clear()
            self._delayed.clear()
        self._thread = None

    def idle(self) -> bool:
        with self._lock:
            queued = bool(self._pending or self._delayed) or self._running > 0
        return not queued and (self._queue is None or self._queue.busy() == 0)

    @property
    def worker_pids(self) -> list[int]:
        return list(getattr(self._queue, "pids", []))

    # -- the step's thread ----------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping:
            try:
                self._cycle()
            except Exception:
                LOGGER.exception("Step %s: unexpected error; carrying on", self.name)
                time.sleep(0.1)

    def _cycle(self) -> None:
        now = time.monotonic()
        timeout = self._release_due(now)
        batch, wait = self._take_batch(now)
        if batch:
            if self._queue is None:
                with self._lock:
                    self._running = len(batch)
                try:
                    started = time.perf_counter()
                    outcomes = run_function(self.function, batch, self.batch is not None)
                    self._settle(batch, outcomes, time.perf_counter() - started)
                finally:
                    with self._lock:
                        self._running = 0
                return
            self._queue.send(batch)
            if self._queue.free() > 0:
                return
            timeout = 1.0
        elif wait is not None:
            timeout = min(timeout, wait)
        self._sleep(timeout)

    def _release_due(self, now: float) -> float:
        """Move retries whose time has come to the queue; seconds until the next one."""
        with self._lock:
            while self._delayed and self._delayed[0][0] <= now:
                self._pending.append(heapq.heappop(self._delayed)[2])
            return min(1.0, self._delayed[0][0] - now) if self._delayed else 1.0

    def _take_batch(self, now: float) -> tuple[list[IncomingFile], float | None]:
        """The next batch to run, or ([], seconds to wait for a batch to fill)."""
        if self._queue is not None and self._queue.free() <= 0:
            return [], None
        size = self.batch.max_size if self.batch is not None else 1
        with self._lock:
            if not self._pending:
                return [], None
            if self.batch is not None and len(self._pending) < size and not self._stopping:
                first = self._pending[0]
                waited = now - self._enqueued_at(first)
                if waited < self.batch.max_wait:
                    return [], self.batch.max_wait - waited
            return [self._pending.popleft() for _ in range(min(size, len(self._pending)))], None

    def _enqueued_at(self, file: IncomingFile) -> float:
        # A batch waits from when its first file was first offered to it.
        return self._first_seen.setdefault(file.uid, time.monotonic())

    def _sleep(self, timeout: float) -> None:
        with self._lock:
            self._sleeping = True
            ready = bool(self._pending) and (self._queue is None or self._queue.free() > 0)
        try:
            if ready:
                return
            if self._queue is None:
                select.select([self._wake_read], [], [], max(0.0, timeout))
            else:
                done, returned = self._queue.wait(max(0.0, timeout), self._wake_read)
                for batch, outcomes, seconds in done:
                    self._settle(batch, outcomes, seconds)
                self._hand_back(returned)
            try:
                os.read(self._wake_read, 4096)
            except BlockingIOError:
                pass
        finally:
            with self._lock:
                self._sleeping = False

    def _hand_back(self, batches: list[tuple[list[IncomingFile], int]]) -> None:
        """Batches a dead worker never answered: run again, unless a file keeps killing workers."""
        again = []
        for batch, in_hand in batches:
            for file in batch:
                self.counters.add("reprocessed")
                if not in_hand:
                    again.append(file)
                    continue
                deliveries = max(self._deliveries.get(file.uid, 0) + 1, int(in_hand))
                self._deliveries[file.uid] = deliveries
                if deliveries >= self.max_deliveries:
                    self.counters.add("dead")
                    self._deliveries.pop(file.uid, None)
                    self._give_up(file, f"its worker died {deliveries} times while processing it", None)
                else:
                    again.append(file)
        with self._lock:
            self._pending.extendleft(reversed(again))

    # -- outcomes -------------------------------------------------------------------------
    def _settle(self, batch: list[IncomingFile], outcomes: list[Outcome], seconds: float) -> None:
        per_file = seconds / max(1, len(batch))
        for file, (ok, error) in zip(batch, outcomes, strict=True):
            self._first_seen.pop(file.uid, None)
            self._deliveries.pop(file.uid, None)
            self.counters.add("processed")
            self.counters.duration(per_file)
            try:
                if ok:
                    self.counters.add("succeeded")
                    self._succeeded(file)
                else:
                    self.counters.add("failed")
                    self._failed(file, error or "failed")
            except Exception as error:
                # Released, so the next reconcile scan takes it up from the work folder.
                LOGGER.error(
                    "Step %s: cannot settle %r (left in the work folder): %r", self.name, file.path, error
                )
                tracker_for(file.work).finished(file.uid)

    def _succeeded(self, file: IncomingFile) -> None:
        if self.then is not None:
            remove_quietly(os.path.join(os.path.dirname(file.path), file.uid + TAGS_SUFFIX))
            self.then.handle(file.with_tags({}, attempt=1))
            return
        remove_quietly(file.path)
        finish(file)

    def _failed(self, file: IncomingFile, error: str) -> None:
        retry_number = file.attempt  # the first retry follows attempt 1
        if retry_number > self.retry.total:
            self.counters.add("dead")
            self._give_up(file, f"failed {file.attempt} times", error)
            return
        self.counters.add("retried")
        delay = self.retry.delay(retry_number)
        file = self._park(file.with_tags({ATTEMPT: file.attempt + 1}, attempt=file.attempt + 1), delay, error)
        self._schedule(file, delay)

    def _park(self, file: IncomingFile, delay: float, error: str) -> IncomingFile:
        """Keep a file due for retry in this step's work folder with a sidecar saying when, so a restart
        resumes the schedule."""
        return self._keep_here(file, {DUE: repr(time.time() + delay), "latest.core.error": error})

    def _keep_here(self, file: IncomingFile, changes: dict[str, str]) -> IncomingFile:
        """Move ``file`` into this step's work folder with a sidecar of its tags (plus ``changes``), so a
        reconcile scan finds it there, tags and all."""
        folder = os.path.join(file.work, self.name)
        path = os.path.join(folder, work_name(file.uid, file.name))
        sidecar = os.path.join(folder, file.uid + TAGS_SUFFIX)
        text = tags_to_json(file.tags.merged(changes))
        # The sidecar first: a crash in between leaves the file where it was, never here without its tags.
        try:
            write_json_atomic(sidecar, text)
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            write_json_atomic(sidecar, text)
        if file.path != path:
            try:
                os.rename(file.path, path)
            except OSError:
                remove_quietly(sidecar)
                raise
        return file.with_tags(changes, path=path)

    def failure_policy(self, work: str) -> FailurePolicy:
        """The failure policy in force for files of the work folder ``work``."""
        return self.failure or FailurePolicy.keep(os.path.join(work, ".trash", self.name))

    def _give_up(self, file: IncomingFile, reason: str, error: str | None) -> None:
        try:
            self.failure_policy(file.work).apply(file, step=self.name, reason=reason, error=error)
        except OSError as os_error:
            LOGGER.error("Step %s: cannot apply the failure policy to %r: %s", self.name, file.path, os_error)

    def report(self) -> dict[str, Any]:
        report = self.counters.snapshot()
        with self._lock:
            report["queued"] = len(self._pending)
            report["delayed"] = len(self._delayed)
        report["restarts"] = getattr(self._queue, "restarts", 0)
        return report
