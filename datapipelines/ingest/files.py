"""IncomingFile: one claimed file on its way through the ingest, and its tags.

Tag names follow mfdata's, so its switch rules port verbatim: ``first.core.*``
is set once at claim, ``latest.core.*`` is overwritten by every step.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import secrets
import time
from collections.abc import Iterator, Mapping
from typing import Any

ORIGINAL_BASENAME = "first.core.original_basename"
ORIGINAL_UID = "first.core.original_uid"
ORIGINAL_DIRNAME = "first.core.original_dirname"
RECEIVED_AT = "first.core.received_at"
STEP_COUNTER = "latest.core.step_counter"
ATTEMPT = "latest.core.attempt"
ERROR = "latest.core.error"
ERROR_STEP = "latest.core.error_step"
REASON = "latest.core.reason"
DUE = "latest.core.retry_due"

# A claimed file is named "<uid>__<name>" in the work folder; a uid never holds "__".
SEPARATOR = "__"
TAGS_SUFFIX = ".tags"


class Tags(Mapping[str, str]):
    """An immutable mapping of tag name to text (picklable, unlike MappingProxyType)."""

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, Any] = ()) -> None:  # type: ignore[assignment]
        self._data = {str(k): str(v) for k, v in dict(data).items()}

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Tags({self._data!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._data) == dict(other)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __reduce__(self) -> tuple[Any, ...]:
        return (Tags, (self._data,))

    def merged(self, changes: Mapping[str, Any]) -> Tags:
        return Tags({**self._data, **{k: str(v) for k, v in changes.items()}})


def new_uid(now: float | None = None) -> str:
    """A unique, time-ordered id: 12 hex digits of milliseconds, then 10 random ones."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"{millis:012x}{secrets.token_hex(5)}"


def uid_time(uid: str) -> float:
    """When the file with ``uid`` was claimed (seconds since the epoch), read back from the uid."""
    return int(uid[:12], 16) / 1000


def iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(timespec="milliseconds")


@dataclasses.dataclass(frozen=True)
class IncomingFile:
    """A file claimed by a listener.

    ``path`` is where it is now (in the work folder, under its uid); ``name`` the
    basename it arrived with; ``attempt`` counts runs of the current step from 1;
    ``tags`` its context (mfdata names, see the module constants); ``work`` the
    work folder that holds it until a step is done with it.
    """

    path: str
    name: str
    uid: str
    size: int
    mtime: float
    received_at: float
    attempt: int = 1
    tags: Tags = dataclasses.field(default_factory=Tags)
    work: str = ""
    listener: str = ""

    def with_tags(self, changes: Mapping[str, Any], **fields: Any) -> IncomingFile:
        """A copy with ``changes`` merged into the tags and ``fields`` replaced."""
        return dataclasses.replace(self, tags=self.tags.merged(changes), **fields)

    def read_bytes(self) -> bytes:
        with open(self.path, "rb") as handle:
            return handle.read()

    @property
    def original_uid(self) -> str:
        return self.tags.get(ORIGINAL_UID, self.uid)


def work_name(uid: str, name: str) -> str:
    return f"{uid}{SEPARATOR}{name}"


def split_work_name(entry: str) -> tuple[str, str] | None:
    """(uid, name) of a work-folder entry, or None for anything that is not a claimed file."""
    uid, sep, name = entry.partition(SEPARATOR)
    if not sep or not uid or not name:
        return None
    return uid, name


def tags_to_json(tags: Mapping[str, str]) -> str:
    # ASCII escapes keep names that are not valid UTF-8 (surrogate escapes) round-tripping; no indent,
    # which would leave json's C encoder for its Python one.
    return json.dumps(dict(tags), sort_keys=True, separators=(",", ":"))


def write_json_atomic(path: str, text: str, *, partial_dir: str | None = None, fsync: bool = False) -> None:
    """Write ``text`` to a temporary name, then rename it to ``path``: readers see all or nothing."""
    folder = partial_dir or os.path.dirname(path)
    temporary = os.path.join(folder, f".{os.getpid()}.{secrets.token_hex(6)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, text.encode("ascii"))
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(temporary, path)
    except BaseException:
        remove_quietly(temporary)
        raise


def read_tags(path: str) -> dict[str, str] | None:
    """The tags in a ``.tags`` sidecar, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="ascii") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
