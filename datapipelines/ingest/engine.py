"""Ingest: listeners, the targets they feed, the reconcile scan and the stats, run as one unit."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

from ..errors import ConfigurationError
from .broker_listener import BrokerListener
from .files import (
    ORIGINAL_BASENAME,
    ORIGINAL_DIRNAME,
    ORIGINAL_UID,
    RECEIVED_AT,
    TAGS_SUFFIX,
    IncomingFile,
    Tags,
    iso,
    read_tags,
    split_work_name,
    uid_time,
)
from .listener import DirectoryListener
from .stats import tracker_for
from .targets import Target, walk

LOGGER = logging.getLogger(__name__)

STATUS_FILE = ".status.json"


class Ingest:
    """Run ``listeners`` into ``pipeline``: start every target, reconcile, claim, and stop cleanly.

    The filesystem is the truth. ``reconcile()`` (at start, then every
    ``reconcile_every`` seconds) puts back every file of a work folder that no
    part of this process holds: files a crash left claimed are routed again,
    files in a target's folder go back to that target (a retry at its saved
    time). Every effect is named after the uid, so a redo only finishes what was
    missing. Nothing in a work folder is ever deleted by a clean-up.
    ``pipeline.stats()["ingest"]`` reports listeners, targets and gauges.
    ``brokers``: MQTT or AMQP listeners writing into a watched folder, started
    after the folders' listeners and stopped before them.
    """

    def __init__(
        self,
        pipeline: Any,
        listeners: DirectoryListener | Sequence[DirectoryListener],
        *,
        brokers: Sequence[BrokerListener] = (),
        reconcile_every: float = 60.0,
        status_every: float = 1.0,
    ) -> None:
        self.pipeline = pipeline
        self.listeners = [listeners] if isinstance(listeners, DirectoryListener) else list(listeners)
        if not self.listeners:
            raise ConfigurationError("Ingest needs at least one listener")
        self.brokers = list(brokers)
        self.targets = walk(pipeline.elements)
        names: dict[str, Target] = {}
        for target in self.targets:
            if target.name in names:
                raise ConfigurationError(
                    f"Two ingest targets are named {target.name!r}: names must be unique"
                )
            names[target.name] = target
        self.by_name = names
        self.reconcile_every = reconcile_every
        self.status_every = status_every
        self._stop = threading.Event()
        self._housekeeper: threading.Thread | None = None
        self.reprocessed = 0
        pipeline.add_stats("ingest", self.report)

    @property
    def work_folders(self) -> list[str]:
        return list(dict.fromkeys(listener.work for listener in self.listeners))

    # -- lifetime ---------------------------------------------------------------------------
    def start(self) -> Ingest:
        for target in self.targets:
            target.start()
        self.reconcile()
        for listener in self.listeners:
            listener.start(self.pipeline)
        for broker in self.brokers:
            broker.start()
        self._stop.clear()
        self._housekeeper = threading.Thread(target=self._housekeep, name="ingest-housekeeping", daemon=True)
        self._housekeeper.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop claiming, finish the files in hand; the rest stay in the work folder for the next start."""
        for broker in self.brokers:
            broker.stop(timeout)
        for listener in self.listeners:
            listener.stop(timeout)
        self._stop.set()
        if self._housekeeper is not None:
            self._housekeeper.join(timeout)
            self._housekeeper = None
        for target in self.targets:
            target.stop(timeout)
        self.write_status()
        for work in self.work_folders:
            tracker_for(work).release_all()

    def __enter__(self) -> Ingest:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def in_flight(self) -> int:
        return sum(len(tracker_for(work)) for work in self.work_folders)

    def idle(self) -> bool:
        """Nothing waiting anywhere: no file to claim, none in flight, every target idle."""
        return (
            all(listener.idle() for listener in self.listeners)
            and self.in_flight() == 0
            and all(target.idle() for target in self.targets)
        )

    def wait_idle(self, timeout: float, *, settle: float = 0.2) -> bool:
        """Wait until idle (and still idle ``settle`` seconds later); False on timeout."""
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.idle():
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since >= settle:
                    return True
            else:
                quiet_since = None
            time.sleep(0.02)
        return False

    def _housekeep(self) -> None:
        next_reconcile = time.monotonic() + self.reconcile_every
        while not self._stop.wait(self.status_every):
            try:
                self.write_status()
                if time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + self.reconcile_every
                    self.reconcile()
            except Exception:
                LOGGER.exception("Ingest housekeeping failed; carrying on")

    # -- reconcile -----------------------------------------------------------------------------
    def reconcile(self) -> int:
        """Put back every file of the work folders that nothing in this process holds; how many."""
        found = 0
        for work in self.work_folders:
            tracker = tracker_for(work)
            watched = next(listener.directory for listener in self.listeners if listener.work == work)
            for folder, target in self._folders(work):
                orphans = list(self._orphans(folder, work, watched, tracker))
                if target is not None:
                    found += target.take_up(folder, orphans)
                    continue
                for file, _tags in orphans:
                    found += 1
                    self.pipeline.put(IncomingFile, file)
        if found:
            self.reprocessed += found
            LOGGER.info("Reconcile: %d claimed files taken up again", found)
        return found

    def _folders(self, work: str) -> Iterable[tuple[str, Target | None]]:
        yield work, None
        with os.scandir(work) as entries:
            subfolders = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        for name in subfolders:
            if name.startswith("."):
                continue
            target = self.by_name.get(name)
            if target is None:
                LOGGER.warning(
                    "Reconcile: %s belongs to no target of this ingest; left alone", os.path.join(work, name)
                )
                continue
            yield os.path.join(work, name), target

    @staticmethod
    def _orphans(
        folder: str, work: str, watched: str, tracker: Any
    ) -> Iterable[tuple[IncomingFile, dict[str, str] | None]]:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries if e.is_file(follow_symlinks=False))
        for entry in names:
            parts = split_work_name(entry)
            if parts is None:
                continue
            uid, name = parts
            if tracker.holds(uid):
                continue
            path = os.path.join(folder, entry)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            tags = read_tags(os.path.join(folder, uid + TAGS_SUFFIX))
            received = uid_time(uid)
            base = {
                ORIGINAL_BASENAME: name,
                ORIGINAL_UID: uid.split(".")[0],
                ORIGINAL_DIRNAME: os.path.basename(watched),  # claimed there: the work folder is its own
                RECEIVED_AT: iso(received),
            }
            merged = Tags({**base, **(tags or {})})
            tracker.claimed(uid)
            yield (
                IncomingFile(
                    path,
                    merged[ORIGINAL_BASENAME],
                    uid,
                    info.st_size,
                    info.st_mtime,
                    received,
                    1,
                    merged,
                    work,
                    "reconcile",
                ),
                tags,
            )

    # -- observability -----------------------------------------------------------------------------
    def report(self) -> dict[str, Any]:
        ages = [tracker_for(work).oldest_age() for work in self.work_folders]
        known = [a for a in ages if a is not None]
        report: dict[str, Any] = {
            "listeners": {listener.name: listener.report() for listener in self.listeners},
            "steps": {target.name: target.report() for target in self.targets},
            "in_flight": self.in_flight(),
            "oldest_pending_age_s": max(known) if known else None,
            "reprocessed": self.reprocessed,
        }
        if self.brokers:
            report["brokers"] = {broker.label: broker.report() for broker in self.brokers}
        return report

    def write_status(self) -> None:
        """Save the report beside the work folders for ``datapipelines ingest status``."""
        status = {"pid": os.getpid(), "time": time.time(), "ingest": self.report()}
        text = json.dumps(status, sort_keys=True, indent=1, default=str)
        for work in self.work_folders:
            temporary = os.path.join(work, f".status.{os.getpid()}.tmp")
            with open(temporary, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(temporary, os.path.join(work, STATUS_FILE))
