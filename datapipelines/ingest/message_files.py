"""MessageFiles: a broker message becomes one incoming file, once per message id, before it is acknowledged.

The file is written under a temporary (ignored) name, fsynced, remembered by a
marker named after the message id, then renamed to its name, which derives from
the id too. A listener killed before its acknowledgement gets the message again
and finds the marker: it only finishes the rename if that was still to do, so a
redelivery never makes a second file, even when the first was already claimed.
Markers are pruned after ``remember`` seconds: the window in which a redelivery
is recognised.
"""

from __future__ import annotations

import hashlib
import os
import re
import time

from ..errors import ConfigurationError

# Set to an exit code, a listener process ends with os._exit(code) after writing a file and before
# acknowledging its message: how the tests kill it at the one moment that matters.
EXIT_BEFORE_ACK = "DATAPIPELINES_INGEST_EXIT_BEFORE_ACK"

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_UNSAFE_CHARACTER = re.compile(r"[^A-Za-z0-9._-]")


def content_id(source: str, payload: bytes) -> str:
    """The id of a message that carries none: a digest of where it came from and what it says."""
    return hashlib.sha256(source.encode() + b"\0" + payload).hexdigest()[:32]


def exit_if_asked() -> None:
    """The test hook of :data:`EXIT_BEFORE_ACK`."""
    code = os.environ.get(EXIT_BEFORE_ACK)
    if code:
        os._exit(int(code))


def _fsync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MessageFiles:
    """Write messages into ``incoming`` as files named by ``name``, a template with ``{id}`` (the
    message id, made safe for a file name) and optionally ``{source}`` (topic or routing key, with
    anything but letters, digits, ``.``, ``_`` and ``-`` made ``_``). Markers live in ``state``
    (default ``<incoming>/.received``, a dot folder the DirectoryListener ignores)."""

    def __init__(
        self,
        incoming: str | os.PathLike[str],
        *,
        name: str = "{id}",
        state: str | os.PathLike[str] | None = None,
        remember: float = 7 * 86400.0,
    ) -> None:
        self.incoming = os.path.abspath(os.fspath(incoming))
        if not os.path.isdir(self.incoming):
            raise ConfigurationError(f"MessageFiles: {self.incoming} is not a folder")
        if "{id}" not in name or "/" in name or name.startswith("."):
            raise ConfigurationError(
                f"MessageFiles: name {name!r} must hold {{id}} (one file per message), no '/', "
                "and not start with '.' (a name the listener ignores)"
            )
        try:
            name.format(id="x", source="x")
        except (KeyError, IndexError, ValueError) as error:
            raise ConfigurationError(
                f"MessageFiles: name {name!r}: the fields are {{id}} and {{source}}"
            ) from error
        if remember <= 0:
            raise ConfigurationError(f"MessageFiles: remember must be > 0 seconds, got {remember}")
        self.name = name
        self.state = os.path.abspath(os.fspath(state)) if state else os.path.join(self.incoming, ".received")
        os.makedirs(self.state, exist_ok=True)
        self.remember = remember
        self._pruned = 0.0

    @staticmethod
    def safe_id(message_id: str) -> str:
        """``message_id`` itself when it is a plain file name, else its digest."""
        if _SAFE.fullmatch(message_id):
            return message_id
        return hashlib.sha256(message_id.encode()).hexdigest()[:32]

    def path_for(self, message_id: str, source: str = "") -> str:
        name = self.name.format(id=self.safe_id(message_id), source=_UNSAFE_CHARACTER.sub("_", source))
        return os.path.join(self.incoming, name)

    def write(self, message_id: str, payload: bytes, source: str = "") -> bool:
        """Make sure the file of ``message_id`` has been delivered into the folder; False when it had
        been already (a redelivery). Once this returns, the message may be acknowledged."""
        final = self.path_for(message_id, source)
        temporary = os.path.join(self.incoming, f".{os.path.basename(final)}.part")
        marker = os.path.join(self.state, self.safe_id(message_id))
        if os.path.exists(marker):
            if os.path.exists(temporary):  # killed between marker and rename: finish the rename
                os.rename(temporary, final)
                _fsync_folder(self.incoming)
            return False
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        # The marker only once the content is durable: a marker always means "the file is complete".
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT, 0o644))
        _fsync_folder(self.state)
        os.rename(temporary, final)
        _fsync_folder(self.incoming)
        return True

    def prune(self, now: float | None = None) -> int:
        """Forget the markers older than ``remember`` seconds; how many went."""
        cutoff = (time.time() if now is None else now) - self.remember
        removed = 0
        with os.scandir(self.state) as entries:
            for entry in entries:
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    continue
        self._pruned = time.monotonic()
        return removed

    def prune_now_and_then(self, every: float = 3600.0) -> None:
        """Prune at most once every ``every`` seconds (listeners call it between messages)."""
        if time.monotonic() - self._pruned >= every:
            self.prune()
