"""A step run by workers on any number of machines that share a stream engine and the filesystem.

The process that listens routes a file to a :class:`DistributedStep`, which
moves it into the step's work folder (with a sidecar of its tags) and publishes
one entry for it. A :class:`StepWorker` (``datapipelines ingest worker CONFIG
--step NAME``) reads entries, runs the step's function and settles each file
where it runs: hands it on (archives it), parks its retry in the engine's delay
set, or gives it up; only then is the entry acknowledged. The work folder stays
the truth: a reconcile scan publishes again every file of the step's folder
that has no entry (the engine restarted empty, or a publish failed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError, DataPipelinesError
from .files import (
    ATTEMPT,
    DUE,
    TAGS_SUFFIX,
    IncomingFile,
    Tags,
    process_alive,
    remove_quietly,
    split_work_name,
)
from .redis_queue import DEFAULT_PREFIX, Entry
from .stats import tracker_for
from .step import Step
from .stream_queue import StreamQueue, open_stream_queue
from .targets import walk
from .workers import run_function

LOGGER = logging.getLogger(__name__)

PUBLISH_BATCH = 500
# A file moved into the folder this recently may be on its way to the stream from another process.
RECONCILE_GRACE = 2.0


class QueueUnavailableError(DataPipelinesError):
    """The stream engine of a distributed step cannot be reached or refused to set the stream up."""


def file_to_json(file: IncomingFile) -> dict[str, Any]:
    return dataclasses.asdict(file) | {"tags": dict(file.tags)}


def file_from_json(data: dict[str, Any]) -> IncomingFile:
    return IncomingFile(**(data | {"tags": Tags(data["tags"])}))


def file_payload(file: IncomingFile) -> str:
    # ASCII JSON keeps names that are not UTF-8 (surrogate escapes) intact across machines.
    return json.dumps(file_to_json(file))


def payload_uid(payload: str) -> str | None:
    try:
        return str(json.loads(payload)["uid"])
    except (ValueError, KeyError, TypeError):
        return None


def open_started(url: str, step: str, **options: Any) -> StreamQueue:
    """The step's stream queue, created on the engine; one clear error when the engine is not there."""
    queue = open_stream_queue(url, step, **options)
    try:
        queue.start()
    except Exception as error:  # each engine has its own connection errors
        queue.close()
        raise QueueUnavailableError(f"Step {step!r}: cannot set up its stream at {url}: {error}") from error
    return queue


def queue_status(step: DistributedStep) -> dict[str, Any]:
    """The engine's view of ``step`` (see :meth:`StreamQueue.status`), without creating anything."""
    queue = open_stream_queue(step.url, step.name, **step.queue_options)
    try:
        return queue.status()
    except Exception as error:  # each engine has its own connection errors
        raise unreadable(step, error) from error
    finally:
        queue.close()


def unreadable(step: DistributedStep, error: Exception) -> QueueUnavailableError:
    return QueueUnavailableError(f"Step {step.name!r}: cannot read its stream at {step.url}: {error}")


class DistributedStep(Step):
    """A :class:`Step` whose files wait on the stream engine at ``url`` for :class:`StepWorker`\\ s.

    Takes every keyword of :class:`Step` but ``workers`` and ``queue``, plus the
    stream's: ``prefix``, ``lease`` (seconds a worker may hold an entry without
    renewing it) and ``max_length`` (outstanding entries before publishing waits).
    Retries wait in the engine's delay set, not in this process.
    """

    def __init__(
        self,
        name: str,
        function: Callable[..., Any],
        *,
        url: str,
        prefix: str = DEFAULT_PREFIX,
        lease: float = 30.0,
        max_length: int = 10_000,
        **options: Any,
    ) -> None:
        if options.get("workers") or options.get("queue") is not None:
            raise ConfigurationError(
                f"Step {name!r} is distributed: its workers are `datapipelines ingest worker` processes, "
                "not workers= or queue="
            )
        super().__init__(name, function, **options)
        self.url = url
        self.queue_options: dict[str, Any] = {
            "prefix": prefix,
            "lease": lease,
            "max_length": max_length,
            "max_deliveries": self.max_deliveries,
        }
        self.stream: StreamQueue | None = None
        self.in_hand: dict[str, Entry] = {}  # in a worker: the entry of each file being settled
        self.handed_on: list[str] = []  # in a worker: sidecars to remove once the next target has the file

    def __repr__(self) -> str:
        return f"DistributedStep({self.name!r}, {self.url!r})"

    # -- the publishing side ------------------------------------------------------------------
    def start(self) -> None:
        if self.stream is None:
            self.stream = open_started(self.url, self.name, **self.queue_options)
        super().start()

    def stop(self, timeout: float = 10.0) -> None:
        """Publish what was handed over so far, then stop; files never published wait on disk."""
        try:
            self.flush()
        finally:
            super().stop(timeout)
        if self.stream is not None:
            self.stream.close()
            self.stream = None

    def _cycle(self) -> None:
        if not self.flush(PUBLISH_BATCH):
            self._sleep(1.0)

    def flush(self, limit: int | None = None) -> int:
        """Publish the files handed to this step so far (up to ``limit``); how many."""
        with self._lock:
            count = len(self._pending) if limit is None else min(limit, len(self._pending))
            files = [self._pending.popleft() for _ in range(count)]
        if files:
            self._publish(files)
        return len(files)

    def _publish(self, files: list[IncomingFile]) -> None:
        assert self.stream is not None, "started"
        payloads = []
        try:
            for file in files:
                try:
                    payloads.append(file_payload(self._keep_here(file, {})))
                except OSError as error:
                    LOGGER.error("Step %s: cannot take %r over (left in the work folder): %s",
                                 self.name, file.path, error)  # fmt: skip
            self.stream.publish_many(payloads)
            self.counters.add("published", len(payloads))
        except Exception as error:  # the engine's own errors: the files wait on disk for the next reconcile
            LOGGER.error("Step %s: cannot publish %d files (the reconcile scan publishes them again): %s",
                         self.name, len(payloads), error)  # fmt: skip
        finally:
            for file in files:
                tracker_for(file.work).finished(file.uid)

    def _schedule(self, file: IncomingFile, delay: float) -> None:
        """A retry waits in the engine's delay set, on its clock, whichever worker takes it then."""
        assert self.stream is not None, "started"
        entry = self.in_hand.pop(file.uid, None)
        if entry is not None:
            self.stream.retry_later(entry, delay, file_payload(file))
        else:
            self.stream.publish_later(file_payload(file), delay)
            tracker_for(file.work).finished(file.uid)

    def _succeeded(self, file: IncomingFile) -> None:
        """Hand the file on; its sidecar here goes only when the worker has flushed what follows, so a
        redo after a lost entry still finds the tags."""
        if self.then is None:
            super()._succeeded(file)
            return
        self.then.handle(file.with_tags({}, attempt=1))
        self.handed_on.append(os.path.join(os.path.dirname(file.path), file.uid + TAGS_SUFFIX))

    def take_up(self, folder: str, found: list[tuple[IncomingFile, dict[str, str] | None]]) -> int:
        """Publish again the files of this step's folder that have no entry on the engine; how many."""
        _remove_lone_sidecars(folder)
        if not found:
            return 0
        self._ensure_started()
        assert self.stream is not None, "started"
        waiting = {payload_uid(payload) for payload in self.stream.waiting()}
        now = time.time()
        again = 0
        for file, tags in found:
            if file.uid in waiting or _changed_within(file.path, now, RECONCILE_GRACE):
                tracker_for(file.work).finished(file.uid)
                continue
            again += 1
            self.counters.add("reprocessed")
            saved = tags or {}
            file = file.with_tags({}, attempt=int(saved.get(ATTEMPT, "1")))
            due = float(saved.get(DUE, "0")) - now
            if due > 0:
                self._schedule(file, due)
            else:
                self._enqueue(file)
        if again:
            LOGGER.warning("Step %s: %d files in its work folder had no entry on %s; published again",
                           self.name, again, self.url)  # fmt: skip
        return again

    def idle(self) -> bool:
        if not super().idle():
            return False
        if self.stream is None:
            return True
        status = self.stream.status()
        return not status["outstanding"] and not status["delayed"]

    def report(self) -> dict[str, Any]:
        report = super().report()
        report["distributed"] = self.url
        return report


def _remove_lone_sidecars(folder: str) -> None:
    """Remove sidecars whose file has gone on (a worker died between the hand-over and removing it),
    and temporaries of sidecars whose writer died."""
    with os.scandir(folder) as entries:
        names = [entry.name for entry in entries]
    present = {parts[0] for parts in map(split_work_name, names) if parts is not None}
    now = time.time()
    for name in names:
        uid = name[: -len(TAGS_SUFFIX)]
        writer = name.split(".")[1] if name.startswith(".") and name.endswith(".tmp") else ""
        if writer.isdigit() and not process_alive(int(writer)):
            remove_quietly(os.path.join(folder, name))  # half a sidecar; its writer died
        elif name.endswith(TAGS_SUFFIX) and uid not in present:
            path = os.path.join(folder, name)
            if not _changed_within(path, now, RECONCILE_GRACE):
                remove_quietly(path)


def _changed_within(path: str, now: float, seconds: float) -> bool:
    try:
        return now - os.lstat(path).st_ctime < seconds
    except FileNotFoundError:
        return True  # gone meanwhile: done with, nothing to publish


class StepWorker:
    """Consume ``step``'s stream as ``consumer``: run its function on ``count`` entries at a time and
    settle each file here (then, retry, failure policy) before acknowledging its entry.

    :meth:`stop` (SIGTERM in ``datapipelines ingest worker``) lets the file in
    hand finish and hands the entries not started back at once.
    """

    def __init__(
        self, step: DistributedStep, *, consumer: str | None = None, count: int | None = None
    ) -> None:
        self.step = step
        self.count = count or (step.batch.max_size if step.batch is not None else 20)
        self.consumer = consumer
        self.lease = float(step.queue_options["lease"])
        self.downstream = walk(step.targets())
        self.stopping = False

    def stop(self) -> None:
        self.stopping = True

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Work until :meth:`stop` (or until ``until()`` is true); stop the targets downstream then."""
        step = self.step
        step.stream = open_started(step.url, step.name, consumer=self.consumer, **step.queue_options)
        for target in self.downstream:
            target.start()
        LOGGER.info("Worker %s of step %s: reading from %s", step.stream.consumer, step.name, step.url)
        try:
            while not self.stopping and not (until is not None and until()):
                try:
                    self.run_once()
                except Exception as error:  # the engine went away for a moment: entries wait there
                    LOGGER.error("Worker of step %s: %s; trying again in 1 s", step.name, error)
                    time.sleep(1.0)
        finally:
            for target in self.downstream:
                target.stop()
            step.stream.close()
            step.stream = None

    def run_once(self, block: float = 0.5) -> int:
        """Read and settle one batch of entries; how many were read."""
        assert self.step.stream is not None, "running"
        entries, dead = self.step.stream.read(count=self.count, block=block)
        for entry in dead:
            self._dead_lettered(entry)
        if entries:
            self._settle(entries)
        return len(entries)

    def _settle(self, entries: list[Entry]) -> None:
        step, stream = self.step, self.step.stream
        assert stream is not None, "running"
        done: list[str] = []
        todo: list[tuple[Entry, IncomingFile]] = []
        for entry in entries:
            file = file_from_json(json.loads(entry.payload))
            if not os.path.lexists(file.path):
                # Settled before; its worker died before the acknowledgement (and maybe the sidecar).
                remove_quietly(os.path.join(os.path.dirname(file.path), file.uid + TAGS_SUFFIX))
                done.append(entry.id)
                continue
            if entry.deliveries > 1:
                step.counters.add("reprocessed")
            todo.append((entry, file))
        groups = [todo] if step.batch is not None else [[item] for item in todo]
        read_at = time.monotonic()
        for index, group in enumerate(groups):
            if self.stopping:
                stream.hand_back(*(entry.id for rest in groups[index:] for entry, _ in rest))
                break
            if time.monotonic() - read_at > self.lease / 2:
                stream.renew(*(entry.id for rest in groups[index:] for entry, _ in rest))
                read_at = time.monotonic()
            files = [file for _, file in group]
            step.in_hand.update((file.uid, entry) for entry, file in group)
            started = time.perf_counter()
            outcomes = run_function(step.function, files, step.batch is not None)
            step._settle(files, outcomes, time.perf_counter() - started)
            # An entry still in hand was not parked for a retry: its file is settled.
            done.extend(entry.id for entry, file in group if step.in_hand.pop(file.uid, None) is not None)
        for target in self.downstream:
            flush = getattr(target, "flush", None)
            if flush is not None:
                flush()
        for sidecar in step.handed_on:
            remove_quietly(sidecar)
        step.handed_on.clear()
        stream.ack(*done)

    def _dead_lettered(self, entry: Entry) -> None:
        file = file_from_json(json.loads(entry.payload))
        if not os.path.lexists(file.path):
            return
        self.step.counters.add("dead")
        deliveries, limit = entry.deliveries - 1, self.step.max_deliveries
        reason = f"delivered {deliveries} times without an answer (max_deliveries {limit})"
        self.step._give_up(file, reason, None)
