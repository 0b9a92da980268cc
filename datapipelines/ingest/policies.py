"""RetryPolicy, FailurePolicy and BatchPolicy: what a step does when a file fails, and how it groups files."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigurationError
from .files import (
    DUE,
    ERROR,
    ERROR_STEP,
    REASON,
    TAGS_SUFFIX,
    IncomingFile,
    remove_quietly,
    tags_to_json,
    work_name,
    write_json_atomic,
)
from .stats import tracker_for


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How often a failed file is tried again, and after how long.

    ``total`` retries after the first attempt; the wait before retry ``n`` is
    mfdata's ``min(max_wait, min_wait + backoff * 2**(n-1))`` seconds.
    """

    total: int = 0
    min_wait: float = 10.0
    max_wait: float = 120.0
    backoff: float = 0.0

    def __post_init__(self) -> None:
        if self.total < 0 or self.min_wait < 0 or self.max_wait < 0 or self.backoff < 0:
            raise ConfigurationError(f"RetryPolicy values must not be negative: {self!r}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        return min(self.max_wait, self.min_wait + self.backoff * 2 ** (retry - 1))


NO_RETRY = RetryPolicy()


@dataclasses.dataclass(frozen=True)
class BatchPolicy:
    """Hand a step up to ``max_size`` files at once, waiting at most ``max_wait`` seconds to fill a batch."""

    max_size: int = 100
    max_wait: float = 10.0

    def __post_init__(self) -> None:
        if self.max_size < 1 or self.max_wait < 0:
            raise ConfigurationError(f"BatchPolicy needs max_size >= 1 and max_wait >= 0: {self!r}")


@dataclasses.dataclass(frozen=True)
class FailurePolicy:
    """What becomes of a file a step gave up on (or that no rule matched).

    ``keep(dir)``: the file and a ``.tags`` sidecar (with the error) go into
    ``dir``; ``move(dir)``: the file alone goes into ``dir``; ``delete()``.
    Kept and moved files are named ``<uid>__<original name>``, so nothing is
    ever overwritten.
    """

    action: str
    directory: str | None = None

    @classmethod
    def keep(cls, directory: str | os.PathLike[str]) -> FailurePolicy:
        return cls("keep", os.fspath(directory))

    @classmethod
    def move(cls, directory: str | os.PathLike[str]) -> FailurePolicy:
        return cls("move", os.fspath(directory))

    @classmethod
    def delete(cls) -> FailurePolicy:
        return cls("delete")

    def __post_init__(self) -> None:
        if self.action not in ("keep", "move", "delete"):
            raise ConfigurationError(f"Unknown failure policy {self.action!r}: use keep, move or delete")
        if self.action != "delete" and not self.directory:
            raise ConfigurationError(f"FailurePolicy.{self.action} needs a directory")

    def apply(self, file: IncomingFile, *, step: str, reason: str, error: str | None = None) -> str | None:
        """Carry the policy out on ``file``; return where it went (None when deleted)."""
        tags: Mapping[str, Any] = {REASON: reason, ERROR_STEP: step}
        if error is not None:
            tags = {**tags, ERROR: error}
        file = file.with_tags(tags)
        destination = None
        if self.directory is not None:
            assert self.directory is not None
            os.makedirs(self.directory, exist_ok=True)
            destination = os.path.join(self.directory, work_name(file.uid, file.name))
            if self.action == "keep":
                write_json_atomic(destination + TAGS_SUFFIX, tags_to_json(file.tags))
            move_file(file.path, destination)
        else:
            remove_quietly(file.path)
        finish(file)
        return destination


def link_or_copy(source: str, destination: str) -> None:
    """A hard link of ``source`` at ``destination``, or a copy where links are not possible."""
    try:
        os.link(source, destination)
    except FileExistsError:
        raise
    except OSError:
        temporary = destination + ".partial"
        shutil.copyfile(source, temporary)
        os.rename(temporary, destination)


def move_file(source: str, destination: str) -> None:
    """Move ``source`` to ``destination``, across filesystems too; a redo finds its own earlier link."""
    try:
        link_or_copy(source, destination)
    except FileExistsError:
        if not os.path.samefile(source, destination):
            raise
    remove_quietly(source)


def finish(file: IncomingFile) -> None:
    """The ingest is done with ``file``: drop it from the in-flight gauge, and its work sidecar if any."""
    tracker_for(file.work).finished(file.uid)
    if has_sidecar(file):
        remove_quietly(os.path.join(os.path.dirname(file.path), file.uid + TAGS_SUFFIX))


def has_sidecar(file: IncomingFile) -> bool:
    """Whether ``file`` has tags saved beside it in the work folder: a retry is due, or its name was cut."""
    return DUE in file.tags or os.path.basename(file.path) != work_name(file.uid, file.name)
