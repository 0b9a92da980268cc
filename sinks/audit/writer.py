"""Write-behind: the queue of writes and the thread that commits them in batches."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from datapipelines.errors import DataPipelinesError

from .schema import Recorded

# The package's logger: one name configures the whole recorder.
LOGGER = logging.getLogger(__package__)

# Most writes one background transaction commits.
BATCH_LIMIT = 500
# Records that may wait under an age bound before the writer's pace is known (from its first batch).
FIRST_BATCH = 100
# Fewest records that may wait under an age bound, however slow the last batches were.
LEAST_PENDING = 50


class AuditWriteError(DataPipelinesError):
    """A write-behind recorder could not commit records in the background (they are kept and retried)."""


class Write(NamedTuple):
    """One unit of recording: statements, then responses, committed together (their blobs first)."""

    statements: tuple[tuple[str, tuple[Any, ...]], ...]
    records: tuple[Recorded, ...] = ()
    # Sessions whose row the statements insert: known to be in the database once committed.
    sessions: tuple[str, ...] = ()


class Writer:
    """The write-behind thread of one recorder in one process.

    Writes wait in a FIFO queue; the thread takes them when the oldest has waited
    ``flush_interval``, when enough records wait (``_due``), or when someone flushes,
    and commits up to BATCH_LIMIT of them in one transaction.

    ``max_age`` bounds how long a record stays uncommitted while callers go on:
    ``submit`` blocks while the oldest uncommitted record (queued or being written)
    is older, so when it returns, every record queued more than ``max_age`` earlier
    is committed; and while more records wait than the thread commits in ``max_age``
    at the pace of its recent batches, so what waits is committed in about that too.

    A failed batch goes back to the front of the queue and the thread pauses until
    a caller has been told (``flush`` or ``submit`` raise AuditWriteError); it
    retries once a flush waits or the interval has passed (a full queue alone no
    longer hurries it).
    """

    def __init__(
        self,
        owner: str,
        connect: Callable[[], sqlite3.Connection],
        commit: Callable[[Sequence[Write], sqlite3.Connection], None],
        max_pending: int,
        flush_interval: float,
        max_age: float | None = None,
    ) -> None:
        self.pid = os.getpid()
        self._owner, self._connect, self._commit = owner, connect, commit
        self._max_pending, self._interval, self._max_age = max_pending, flush_interval, max_age
        self._writing_since: float | None = None  # when the oldest write being committed was queued
        self._pace: float | None = None  # records per second recent batches were committed at
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[tuple[float, int, Write]] = deque()  # (queued at, records, write)
        self.pending = 0  # records queued or being written
        # Request ids with a record not yet committed: replay of those waits for a flush.
        self.pending_requests: dict[str, int] = {}
        # Sessions whose row is queued: written before any later record (the queue is FIFO).
        self.sessions: set[str] = set()
        self._submitted = self._committed = self._flush_to = 0  # counts of writes
        self._error: BaseException | None = None
        self._retrying = False  # the head of the queue failed to commit last time
        self._stopping = False
        self._alive = True
        self._thread = threading.Thread(target=self._run, name=f"{owner} writer", daemon=True)
        self._thread.start()

    # -- callers -------------------------------------------------------------------
    def submit(self, write: Write) -> None:
        """Queue ``write``; blocks while the queue is full or too old (never drops one)."""
        records = max(1, len(write.records))
        with self._cond:
            # A write larger than the limit enters an empty queue, or it would wait forever.
            while self.pending and (self.pending + records > self._limit() or self._too_old()):
                self._raise_error()
                self._cond.wait()
            self._raise_error()
            self._queue.append((time.monotonic(), records, write))
            self.pending += records
            for record in write.records:
                self.pending_requests[record.request_id] = self.pending_requests.get(record.request_id, 0) + 1
            self._submitted += 1
            self.sessions.update(write.sessions)
            if len(self._queue) == 1 or self.pending >= self._due():
                self._cond.notify_all()

    def _limit(self) -> int:
        """How many records may wait: ``max_pending``, and under an age bound what the pace commits in it."""
        if self._max_age is None:
            return self._max_pending
        affordable = FIRST_BATCH if self._pace is None else int(self._pace * self._max_age)
        return min(self._max_pending, max(LEAST_PENDING, affordable))

    def _due(self) -> int:
        """How many waiting records make a batch due at once: the limit, or half of it under an age
        bound (callers fill the other half while the thread commits, rather than wait in turn)."""
        return self._limit() // (1 if self._max_age is None else 2)

    def _too_old(self) -> bool:
        """Whether the oldest uncommitted record has waited longer than ``max_age`` (condition held)."""
        if self._max_age is None:
            return False
        if self._writing_since is not None:
            oldest = self._writing_since
        elif self._queue:
            oldest = self._queue[0][0]
        else:
            return False
        return time.monotonic() - oldest > self._max_age

    def flush(self) -> None:
        """Wait until every write submitted so far is committed; AuditWriteError if one failed."""
        if self._committed >= self._submitted:
            return
        with self._cond:
            target = self._submitted
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            while self._committed < target:
                self._raise_error()
                # Again on every wake-up: a failed batch is retried only while someone waits for it.
                self._flush_to = max(self._flush_to, target)
                self._cond.wait()

    def stop(self) -> None:
        """Commit what is queued (unless a failure is pending) and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def _raise_error(self) -> None:
        # Called with the condition held. Telling a caller lets the thread retry.
        if self._error is None and self._alive:
            return
        error, self._error = self._error, None
        self._cond.notify_all()
        state = "kept and retried" if self._alive else "not written: the writer thread has stopped"
        cause = "the writer thread has stopped" if error is None else f"{type(error).__name__}: {error}"
        raise AuditWriteError(
            f"{self._owner} could not commit records in the background ({self.pending} waiting, "
            f"{state}): {cause}"
        ) from error

    # -- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while (batch := self._next_batch()) is not None:
                writes = [write for _, _, write in batch]
                started = time.monotonic()
                try:
                    db = db or self._connect()
                    self._commit(writes, db)
                except Exception as error:
                    LOGGER.error(
                        "%s: background commit of %d writes failed", self._owner, len(writes), exc_info=True
                    )
                    if db is not None:  # the retry starts from a fresh connection
                        with contextlib.suppress(sqlite3.Error):
                            db.close()
                        db = None
                    with self._cond:
                        self._queue.extendleft(reversed(batch))
                        self._writing_since = None
                        self._error = error
                        self._flush_to = self._committed
                        self._retrying = True
                        self._cond.notify_all()
                    continue
                self._done(batch, time.monotonic() - started)
        finally:
            with self._cond:
                self._alive = False
                if self.pending:
                    LOGGER.error("%s: writer stopped with %d records not written", self._owner, self.pending)
                self._cond.notify_all()
            if db is not None:
                db.close()

    def _next_batch(self) -> list[tuple[float, int, Write]] | None:
        """The next writes to commit, once due; None when stopping (or stopped by a failure)."""
        with self._cond:
            while True:
                if self._stopping and (self._error is not None or not self._queue):
                    return None
                if self._error is None and self._queue:
                    wait = self._queue[0][0] + self._interval - time.monotonic()
                    full = self.pending >= self._due() and not self._retrying
                    if self._stopping or self._flush_to > self._committed or wait <= 0 or full:
                        count = min(len(self._queue), BATCH_LIMIT)
                        self._writing_since = self._queue[0][0]
                        return [self._queue.popleft() for _ in range(count)]
                    self._cond.wait(wait)
                else:
                    self._cond.wait()

    def _done(self, batch: list[tuple[float, int, Write]], seconds: float) -> None:
        with self._cond:
            pace = sum(records for _, records, _ in batch) / max(seconds, 1e-6)
            # Smoothed: one batch slowed by the machine (or sped up by blobs already there) moves it half way.
            self._pace = pace if self._pace is None else (self._pace + pace) / 2
            for _, records, write in batch:
                self.pending -= records
                for record in write.records:
                    left = self.pending_requests[record.request_id] - 1
                    if left:
                        self.pending_requests[record.request_id] = left
                    else:
                        del self.pending_requests[record.request_id]
            self._committed += len(batch)
            self._writing_since = None
            self._retrying = False
            self._cond.notify_all()
