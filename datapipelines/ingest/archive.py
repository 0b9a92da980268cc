"""ArchiveSink: the last stop of an incoming file, named by a template, with a JSON ``.tags`` sidecar."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import os
import re
import secrets
import shutil
import threading
import time
from typing import Any

from ..errors import ConfigurationError
from .files import (
    ORIGINAL_BASENAME,
    ORIGINAL_UID,
    TAGS_SUFFIX,
    IncomingFile,
    Tags,
    process_alive,
    read_tags,
    remove_quietly,
    tags_to_json,
    write_json_atomic,
)
from .policies import FailurePolicy, finish
from .stats import Counters
from .targets import Target

LOGGER = logging.getLogger(__name__)

UID = "latest.core.uid"
DURABILITY = ("none", "batch", "file")
COLLISIONS = ("suffix", "error")
PLACEHOLDERS = ("original_basename", "original_uid", "uid", "random_id", "name")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_PARTIAL = ".partial"


@dataclasses.dataclass(frozen=True)
class ArchivedFile:
    """What the archive made of an incoming file: where it and its tags are now."""

    uid: str
    path: str
    tags_path: str
    name: str
    size: int
    original_uid: str
    received_at: float
    tags: Tags


class ArchiveCollision(OSError):
    """The archive name is taken by another file and ``on_collision="error"``."""


def _syncfs(path: str) -> None:
    """Flush every dirty page of the filesystem holding ``path``: one call for a whole batch."""
    libc_name = ctypes.util.find_library("c")
    function = getattr(ctypes.CDLL(libc_name, use_errno=True), "syncfs", None) if libc_name else None
    if function is None:
        os.sync()
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        if function(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


class ArchiveSink(Target):
    """Keep each file under ``root`` at ``template``, with its tags beside it in ``<name>.tags``.

    ``template`` takes strftime codes (of the claim time, in UTC) and
    ``{original_basename}``, ``{original_uid}``, ``{uid}``, ``{random_id}``,
    ``{name}``. The file is hard-linked into place (copied across filesystems)
    and the sidecar written under a temporary name and renamed, so a reader never
    sees half of either. A name taken by another file is never overwritten:
    ``on_collision="suffix"`` inserts the uid before the extension, ``"error"``
    hands the file to ``failure`` (default: kept in ``<root>/.failed``).

    ``durability``: ``"none"`` leaves flushing to the OS; ``"batch"`` flushes the
    filesystem once per ``batch_size`` files (or ``batch_wait`` seconds) before
    the work copies go; ``"file"`` fsyncs each file, sidecar and folder.
    ``catalog``: a :class:`~datapipelines.sinks.catalog.Catalog` that gets one
    row per archived file, keyed by uid (a redo updates the row).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        template: str = "%Y%m%d/{original_basename}",
        *,
        name: str = "archive",
        durability: str = "none",
        on_collision: str = "suffix",
        catalog: Any = None,
        failure: FailurePolicy | None = None,
        tags_suffix: str = TAGS_SUFFIX,
        batch_size: int = 100,
        batch_wait: float = 0.2,
    ) -> None:
        if durability not in DURABILITY:
            raise ConfigurationError(
                f"ArchiveSink durability must be one of {DURABILITY}, got {durability!r}"
            )
        if on_collision not in COLLISIONS:
            raise ConfigurationError(
                f"ArchiveSink on_collision must be one of {COLLISIONS}, got {on_collision!r}"
            )
        unknown = [p for p in _PLACEHOLDER.findall(template) if p not in PLACEHOLDERS]
        if unknown:
            raise ConfigurationError(
                f"ArchiveSink template {template!r}: unknown placeholder {{{unknown[0]}}}; "
                f"use {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            )
        self.root = os.path.abspath(os.fspath(root))
        self.template = template
        self.name = name
        self.durability = durability
        self.on_collision = on_collision
        self.catalog = catalog
        self.failure = failure or FailurePolicy.keep(os.path.join(self.root, ".failed"))
        self.tags_suffix = tags_suffix
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.counters = Counters("archived", "collisions", "failed", "redone", "flushes")
        self._random = "{random_id}" in template
        self._partial = os.path.join(self.root, _PARTIAL)
        self._folders: set[str] = set()
        self._lock = threading.Lock()
        self._unflushed: list[IncomingFile] = []
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"ArchiveSink({self.root!r})"

    # -- naming ---------------------------------------------------------------------------
    def destination(self, file: IncomingFile) -> str:
        """The archive path the template gives ``file`` (before any collision suffix)."""
        values = {
            "original_basename": file.tags.get(ORIGINAL_BASENAME, file.name),
            "original_uid": file.tags.get(ORIGINAL_UID, file.uid),
            "uid": file.uid,
            "random_id": secrets.token_hex(8) if self._random else "",
            "name": file.name,
        }
        dated = (
            time.strftime(self.template, time.gmtime(file.received_at))
            if "%" in self.template
            else self.template
        )
        relative = _PLACEHOLDER.sub(lambda m: values[m.group(1)], dated)
        path = os.path.normpath(os.path.join(self.root, relative))
        if not path.startswith(self.root + os.sep):
            raise ConfigurationError(
                f"ArchiveSink template {self.template!r} leaves {self.root} for {file.name!r}"
            )
        return path

    # -- archiving --------------------------------------------------------------------------
    def start(self) -> None:
        self._clear_partial()
        if self.durability == "batch" and self._flusher is None:
            self._stop.clear()
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"ingest-{self.name}-flush", daemon=True
            )
            self._flusher.start()

    def handle(self, file: IncomingFile) -> None:
        try:
            archived = self._archive(file)
        except (OSError, ConfigurationError) as error:
            if not os.path.lexists(file.path):
                # Removed from the work folder behind the ingest's back: nothing left to archive.
                LOGGER.warning("Archive %s: %r vanished before it was archived", self.name, file.name)
                self.counters.add("failed")
                finish(file)
                return
            self.counters.add("failed")
            LOGGER.warning("Archive %s: cannot archive %r: %s", self.name, file.name, error)
            self.failure.apply(
                file, step=self.name, reason="cannot archive", error=f"{type(error).__name__}: {error}"
            )
            return
        if self.catalog is not None:
            self.catalog.record(ArchivedFile, archived, query={"uid": archived.uid}, source=self.name)
        self.counters.add("archived")
        if self.durability == "batch":
            with self._lock:
                self._unflushed.append(file)
                full = len(self._unflushed) >= self.batch_size
            if full:
                self.flush()
            return
        os.unlink(file.path)
        finish(file)

    def _archive(self, file: IncomingFile) -> ArchivedFile:
        wanted = self.destination(file)
        path = self._place(file, wanted)
        if path is None:
            self.counters.add("collisions")
            if self.on_collision == "error":
                raise ArchiveCollision(f"{wanted} is already taken by another file")
            stem, extension = os.path.splitext(wanted)
            path = self._place(file, f"{stem}.{file.uid}{extension}")
            if path is None:
                raise ArchiveCollision(f"{wanted} and its uid-suffixed name are both taken")
        tags = file.tags.merged({UID: file.uid})
        tags_path = path + self.tags_suffix
        fsync = self.durability == "file"
        write_json_atomic(tags_path, tags_to_json(tags), partial_dir=self._partial_dir(), fsync=fsync)
        if fsync:
            _fsync_path(path)
            _fsync_path(os.path.dirname(path))
        return ArchivedFile(
            file.uid, path, tags_path, file.name, file.size, file.original_uid, file.received_at, tags
        )

    def _place(self, file: IncomingFile, path: str) -> str | None:
        """Link ``file`` at ``path``; ``path`` if it is there now (or was already, from an earlier try),
        None if another file holds the name."""
        folder = os.path.dirname(path)
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        try:
            os.link(file.path, path)
            return path
        except FileExistsError:
            pass
        except OSError:
            return self._copy_into_place(file, path)
        if (
            os.path.samefile(file.path, path)
            or (read_tags(path + self.tags_suffix) or {}).get(UID) == file.uid
        ):
            self.counters.add("redone")
            return path
        return None

    def _copy_into_place(self, file: IncomingFile, path: str) -> str | None:
        """Across filesystems: copy under a temporary name, then link it in (never over another file)."""
        temporary = os.path.join(self._partial_dir(), f".{os.getpid()}.{secrets.token_hex(6)}.tmp")
        shutil.copyfile(file.path, temporary)
        try:
            os.link(temporary, path)
        except FileExistsError:
            same = (read_tags(path + self.tags_suffix) or {}).get(UID) == file.uid
            return path if same else None
        finally:
            remove_quietly(temporary)
        return path

    def _partial_dir(self) -> str:
        if self._partial not in self._folders:
            os.makedirs(self._partial, exist_ok=True)
            self._folders.add(self._partial)
        return self._partial

    def _clear_partial(self) -> None:
        """Remove temporary files left by processes of this archive that died mid-write."""
        try:
            entries = os.listdir(self._partial)
        except FileNotFoundError:
            return
        for entry in entries:
            pid = entry.split(".")[1] if entry.count(".") >= 2 else ""
            if pid.isdigit() and not process_alive(int(pid)):
                remove_quietly(os.path.join(self._partial, entry))

    # -- durability=batch ---------------------------------------------------------------------
    def flush(self) -> None:
        """Make the archived files durable, then let their work copies go."""
        with self._lock:
            batch, self._unflushed = self._unflushed, []
        if not batch:
            return
        _syncfs(self.root)
        self.counters.add("flushes")
        for file in batch:
            remove_quietly(file.path)
            finish(file)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.batch_wait):
            try:
                self.flush()
            except OSError as error:
                LOGGER.error("Archive %s: flush failed (work copies kept): %s", self.name, error)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout)
            self._flusher = None
        self.flush()
        try:
            os.rmdir(self._partial)  # only when empty: nothing is being written any more
            self._folders.discard(self._partial)
        except OSError:
            pass

    def idle(self) -> bool:
        return not self._unflushed

    def report(self) -> dict[str, Any]:
        return self.counters.snapshot()


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
