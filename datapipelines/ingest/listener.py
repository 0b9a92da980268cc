"""DirectoryListener: claim the files that arrive in a folder and put them into a pipeline.

Only complete files are taken: on Linux an inotify watch acts on IN_CLOSE_WRITE
and IN_MOVED_TO, never on creation; a scan (at start, on IN_Q_OVERFLOW, every
``rescan_every`` seconds, or every ``poll`` seconds in polling mode) takes a
file once its mtime is ``settle`` seconds old. A file is claimed by renaming it
into the work folder under a new uid: a rename succeeds once, so no file is
claimed twice, whatever else scans the folder at the same time.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import logging
import os
import re
import stat
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigurationError
from .files import (
    ORIGINAL_BASENAME,
    ORIGINAL_DIRNAME,
    ORIGINAL_UID,
    RECEIVED_AT,
    TAGS_SUFFIX,
    IncomingFile,
    Tags,
    iso,
    new_uid,
    tags_to_json,
    uid_time,
    work_name,
    write_json_atomic,
)
from .stats import Counters, tracker_for

LOGGER = logging.getLogger(__name__)

DEFAULT_IGNORE = (".*", "*.tmp", "*.t", "*.part", "*.working")
_NAME_MAX = 255
_YOUNG = 60.0  # seconds: files changed more recently get the open-for-writing check

try:  # the optional extra datapipelines[ingest]
    import inotify_simple
except ImportError:  # pragma: no cover - exercised where the extra is missing
    inotify_simple = None


def ignore_matcher(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regular expression for a list of fnmatch patterns."""
    translated = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(translated) if translated else r"(?!)")


class DirectoryListener:
    """Watch ``directory``; claim complete files into ``work`` and ``pipeline.put`` them.

    ``work`` (default ``<directory>/.work``) must be on the same filesystem.
    ``ignore``: fnmatch patterns of names never taken (temporary names,
    dotfiles). Folders, symlinks and other non-regular entries are left where
    they are and counted as ``ignored``. ``poll`` (seconds) scans instead of
    watching: for network filesystems, or where inotify is missing.
    Back-pressure: no file is claimed while ``max_in_flight`` files are in the
    work folder or it has less than ``min_free_bytes`` free; claiming resumes
    by itself.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        work: str | os.PathLike[str] | None = None,
        name: str | None = None,
        ignore: Iterable[str] = DEFAULT_IGNORE,
        settle: float = 0.5,
        rescan_every: float = 300.0,
        poll: float | None = None,
        max_in_flight: int = 10_000,
        min_free_bytes: int = 64 * 2**20,
    ) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        if not os.path.isdir(self.directory):
            raise ConfigurationError(f"DirectoryListener: {self.directory} is not a folder")
        self.work = (
            os.path.abspath(os.fspath(work)) if work is not None else os.path.join(self.directory, ".work")
        )
        os.makedirs(self.work, exist_ok=True)
        if os.stat(self.work).st_dev != os.stat(self.directory).st_dev:
            raise ConfigurationError(
                f"DirectoryListener: the work folder {self.work} must be on the filesystem of "
                f"{self.directory}"
            )
        self.name = name or os.path.basename(self.directory)
        self._ignore = ignore_matcher(ignore)
        self.settle = settle
        self.rescan_every = rescan_every
        if poll is None and inotify_simple is None:
            LOGGER.warning(
                "inotify_simple is not installed (pip install 'datapipelines[ingest]'): polling every 1 s"
            )
            poll = 1.0
        self.poll = poll
        self.max_in_flight = max_in_flight
        self.min_free_bytes = min_free_bytes
        self.counters = Counters(
            "received", "claimed", "ignored", "vanished", "claim_errors", "overflows", "rescans", "paused"
        )
        self.tracker = tracker_for(self.work)
        self._candidates: dict[str, tuple[int, int, float]] = {}  # name -> (size, mtime_ns, unchanged since)
        self._backlog: deque[str] = deque()
        self._rescan_needed = True
        self._paused = False
        self._disk_checked = 0.0
        self._disk_low = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pipeline: Any = None

    def __repr__(self) -> str:
        return f"DirectoryListener({self.directory!r})"

    # -- lifetime ---------------------------------------------------------------------------
    def start(self, pipeline: Any) -> None:
        """Watch and claim in a background thread, putting every file into ``pipeline``."""
        self._pipeline = pipeline
        self._stop.clear()
        inotify = self._watch()
        self._thread = threading.Thread(
            target=self._run, args=(inotify,), name=f"ingest-{self.name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def idle(self) -> bool:
        """Nothing seen and not yet claimed (files waiting to settle, a backlog, a scan to do)."""
        return not (self._candidates or self._backlog or self._rescan_needed or self._paused)

    def _watch(self) -> Any:
        if self.poll is not None:
            return None
        flags = inotify_simple.flags
        inotify = inotify_simple.INotify()
        inotify.add_watch(self.directory, flags.CLOSE_WRITE | flags.MOVED_TO | flags.ONLYDIR)
        return inotify

    def _run(self, inotify: Any) -> None:
        # Polling is a rescan every `poll` seconds; with inotify, one every `rescan_every`.
        period = self.poll if inotify is None and self.poll is not None else self.rescan_every
        next_rescan = time.monotonic() + period
        try:
            while not self._stop.is_set():
                try:
                    if self._hold_back():
                        self._stop.wait(0.02)
                        continue
                    self._drain_backlog()
                    if self._rescan_needed or time.monotonic() >= next_rescan:
                        self._rescan_needed = False
                        next_rescan = time.monotonic() + period
                        self.rescan()
                    self._check_candidates()
                    wait = self.settle / 4 if self._candidates else 0.5
                    if inotify is None:
                        self._stop.wait(max(0.0, min(wait, next_rescan - time.monotonic())))
                    else:
                        self._read_events(inotify, wait)
                except Exception:
                    LOGGER.exception("Listener %s: unexpected error; carrying on", self.name)
                    self._stop.wait(0.1)
        finally:
            if inotify is not None:
                inotify.close()

    def _read_events(self, inotify: Any, wait: float) -> None:
        overflow = inotify_simple.flags.Q_OVERFLOW
        for event in inotify.read(timeout=int(wait * 1000)):
            if event.mask & overflow:
                self.counters.add("overflows")
                LOGGER.warning("Listener %s: inotify queue overflowed; rescanning", self.name)
                self._rescan_needed = True
            elif event.name:
                self._backlog.append(event.name)
        self._drain_backlog()

    # -- back-pressure ----------------------------------------------------------------------
    def _hold_back(self) -> bool:
        """True while claiming must wait (too many in flight, too little disk); counts each pause."""
        full = len(self.tracker) >= self.max_in_flight or self._disk_is_low()
        if full and not self._paused:
            self._paused = True
            self.counters.add("paused")
            LOGGER.info("Listener %s: paused (%d in flight)", self.name, len(self.tracker))
        elif not full and self._paused:
            self._paused = False
            # Events may have been dropped while we were not reading: look at the folder again.
            self._rescan_needed = True
        return full

    def _disk_is_low(self) -> bool:
        if not self.min_free_bytes:
            return False
        now = time.monotonic()
        if now - self._disk_checked >= 0.5:
            self._disk_checked = now
            info = os.statvfs(self.work)
            self._disk_low = info.f_bavail * info.f_frsize < self.min_free_bytes
        return self._disk_low

    # -- finding files -------------------------------------------------------------------------
    def _drain_backlog(self) -> None:
        while self._backlog:
            if len(self.tracker) >= self.max_in_flight:
                return
            name = self._backlog.popleft()
            if self._ignore.match(name):
                continue
            self._candidates.pop(name, None)
            self._take(name)

    def rescan(self) -> None:
        """List the folder: claim the files that have settled, remember the others to look at again."""
        self.counters.add("rescans")
        now = time.time()
        try:
            entries = os.scandir(self.directory)
        except OSError as error:
            LOGGER.error("Listener %s: cannot list %s: %s", self.name, self.directory, error)
            return
        with entries:
            for entry in entries:
                if self._stop.is_set():
                    return
                if len(self.tracker) >= self.max_in_flight:
                    self._rescan_needed = True
                    return
                name = entry.name
                if self._ignore.match(name) or name in self._candidates:
                    continue
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if not entry.is_file(follow_symlinks=False):
                    self.counters.add("ignored")
                    continue
                if self._settled(info.st_mtime, now) and not self._being_written(
                    entry.path, info.st_mtime, now
                ):
                    self._take(name, info)
                else:
                    self._candidates[name] = (info.st_size, info.st_mtime_ns, time.monotonic())

    def _settled(self, mtime: float, now: float) -> bool:
        return now - self.settle >= mtime and mtime <= now

    @staticmethod
    def _being_written(path: str, mtime: float, now: float) -> bool:
        """Whether a recently changed file is still open for writing (a writer pausing longer than
        ``settle``). A read lease is refused while anyone has the file open for writing; where
        leases are not available (NFS, another owner) only ``settle`` decides."""
        if now - mtime > _YOUNG:
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as error:
            return error.errno == errno.EAGAIN
        else:
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            return False
        finally:
            os.close(fd)

    def _check_candidates(self) -> None:
        """Claim the files found still changing once they have been left alone for ``settle`` seconds."""
        now, clock = time.time(), time.monotonic()
        for name, (size, mtime_ns, since) in list(self._candidates.items()):
            if len(self.tracker) >= self.max_in_flight:
                return
            try:
                info = os.lstat(os.path.join(self.directory, name))
            except FileNotFoundError:
                del self._candidates[name]
                continue
            if (info.st_size, info.st_mtime_ns) != (size, mtime_ns):
                self._candidates[name] = (info.st_size, info.st_mtime_ns, clock)
            elif self._settled(info.st_mtime, now) or clock - since >= self.settle:
                if self._being_written(os.path.join(self.directory, name), info.st_mtime, now):
                    self._candidates[name] = (size, mtime_ns, clock)
                    continue
                del self._candidates[name]
                self._take(name)

    # -- claiming ----------------------------------------------------------------------------
    def _take(self, name: str, info: os.stat_result | None = None) -> None:
        file = self.claim(name, info)
        if file is not None:
            self._pipeline.put(IncomingFile, file)

    def claim(self, name: str, info: os.stat_result | None = None) -> IncomingFile | None:
        """Rename ``name`` into the work folder under a new uid; None if it is gone or not a regular file.
        ``info``: its lstat, when a scan just made one."""
        source = os.path.join(self.directory, name)
        try:
            info = info or os.lstat(source)
        except FileNotFoundError:
            self.counters.add("vanished")
            return None
        except OSError as error:
            self.counters.add("claim_errors")
            LOGGER.warning("Listener %s: cannot stat %r: %s", self.name, name, error)
            return None
        if not stat.S_ISREG(info.st_mode):
            self.counters.add("ignored")
            return None
        self.counters.add("received")
        uid = new_uid()
        received = uid_time(uid)
        tags = Tags(
            {
                ORIGINAL_BASENAME: name,
                ORIGINAL_UID: uid,
                ORIGINAL_DIRNAME: os.path.basename(self.directory),
                RECEIVED_AT: iso(received),
            }
        )
        entry = work_name(uid, name)
        if len(os.fsencode(entry)) > _NAME_MAX:
            # The work name is cut; the whole name lives in a sidecar written first.
            entry = os.fsdecode(os.fsencode(entry)[:_NAME_MAX])
            write_json_atomic(os.path.join(self.work, uid + TAGS_SUFFIX), tags_to_json(tags))
        destination = os.path.join(self.work, entry)
        self.tracker.claimed(uid)
        try:
            os.rename(source, destination)
        except OSError as error:
            self.tracker.finished(uid)
            if error.errno == errno.ENOENT:
                self.counters.add("vanished")
            else:
                self.counters.add("claim_errors")
                LOGGER.warning("Listener %s: cannot claim %r: %s", self.name, name, error)
            return None
        self.counters.add("claimed")
        return IncomingFile(
            destination, name, uid, info.st_size, info.st_mtime, received, 1, tags, self.work, self.name
        )

    def report(self) -> dict[str, Any]:
        report = self.counters.snapshot()
        report["waiting_to_settle"] = len(self._candidates)
        report["paused_now"] = self._paused
        return report
