"""Content-addressed blob files: each payload and request body stored once, named by its sha256."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypeGuard

from datapipelines.errors import DamagedEntryError, NotFoundError

from .schema import AuditStoreError

# The package's logger: one name configures the whole recorder.
LOGGER = logging.getLogger(__package__)

BLOBS = "blobs"
# A blob whose mtime is younger than this needs no refresh to survive ``gc`` (min_age 60 by default).
FRESH_BLOB_SECONDS = 1.0

_DIGEST = re.compile("[0-9a-f]{64}")
# Reads never follow a symlink (the folder or the file) and never block on a FIFO.
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# A temporary blob file is created, never opened through a symlink planted at its name.
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


def is_digest(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a sha256 as the recorder names blobs: 64 lowercase hex digits."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


class DamagedBlobError(DamagedEntryError):
    """A recorded payload no longer matches its sha256; it was moved aside, never served."""

    sha256: str = ""  # the blob's name


class BlobStore:
    """Content-addressed files: ``root/ab/abcdef...``, each written once, atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = os.fspath(root)
        # Sub-folders seen to exist: a new blob then costs no stat or mkdir of its folder.
        self._folders: set[str] = set()

    def path(self, sha256: str) -> Path:
        """Where the blob named ``sha256`` lives; DamagedBlobError for a name that is not a sha256."""
        if not is_digest(sha256):
            raise DamagedBlobError(f"Recorded blob name {sha256!r} is not a sha256: nothing opened")
        return self.root / sha256[:2] / sha256

    def write(self, data: bytes) -> str:
        """Store ``data`` (if not already there) and return its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        self.store(sha256, data)
        return sha256

    def store(self, sha256: str, data: bytes) -> None:
        """Store ``data`` under its ``sha256`` (computed by the caller) unless it is already there."""
        folder = os.path.join(self._root, sha256[:2])
        path = os.path.join(folder, sha256)
        if folder not in self._folders:
            self._make_folder(folder)
        try:
            found = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISREG(found.st_mode) and found.st_size == len(data):
                # Refresh an old mtime: gc leaves recently used blobs alone while rows commit.
                if time.time() - found.st_mtime > FRESH_BLOB_SECONDS:
                    os.utime(path)
                return
        temporary = os.path.join(folder, f".{sha256}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            fd = os.open(temporary, _CREATE_FLAGS, 0o666)
        except FileNotFoundError:
            # The folder went away since it was seen (blobs removed by hand): make it again.
            self._make_folder(folder)
            fd = os.open(temporary, _CREATE_FLAGS, 0o666)
        with open(fd, "wb") as file:
            file.write(data)
        # Replaces whatever else sits at the blob's name (a symlink, a FIFO) with the file itself.
        os.replace(temporary, path)

    def _make_folder(self, folder: str) -> None:
        with contextlib.suppress(FileExistsError):
            os.makedirs(folder, exist_ok=True)
        if os.path.islink(folder) or not os.path.isdir(folder):
            raise AuditStoreError(
                f"Blob folder {folder} is a symlink or not a directory: "
                f"blobs are written only into folders of their own in {self.root}"
            )
        self._folders.add(folder)

    def read(self, sha256: str) -> bytes:
        """The bytes stored under ``sha256``; DamagedBlobError if they do not match it."""
        try:
            data = self._contents(sha256)
        except DamagedBlobError as error:
            LOGGER.warning("%s: %s", self.root, error)
            raise
        if data is None:
            raise NotFoundError(f"Recorded blob {sha256} is missing from {self.root}")
        if hashlib.sha256(data).hexdigest() != sha256:
            path = self.path(sha256)
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, path.with_name(sha256 + ".damaged"))
            LOGGER.warning("Blob %s is damaged: moved aside to %s.damaged, not served", path, sha256)
            damaged = DamagedBlobError(f"Recorded blob {sha256} is damaged (its bytes differ): not served")
            damaged.sha256 = sha256
            raise damaged
        return data

    def check(self, sha256: object) -> str:
        """ "ok", "missing" or "damaged" (a name that is not a sha256 too, without opening anything)."""
        try:
            data = self._contents(sha256)
        except DamagedBlobError:
            return "damaged"
        if data is None:
            return "missing"
        return "ok" if hashlib.sha256(data).hexdigest() == sha256 else "damaged"

    def _contents(self, sha256: object) -> bytes | None:
        """The bytes of the regular file named ``sha256`` inside ``root``; None if there is none.

        A tampered database must not make the recorder open any other path: a name
        that is not a sha256 is refused before it becomes a path, and a symlink (folder
        or file), a FIFO or a device where the blob should be is refused without
        blocking or reading (all DamagedBlobError).
        """
        if not is_digest(sha256):
            raise DamagedBlobError(f"Recorded blob name {sha256!r} is not a sha256: nothing opened")
        try:
            folder = os.open(os.path.join(self._root, sha256[:2]), _FOLDER_FLAGS)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._refused(sha256, error) from error
        try:
            fd = os.open(sha256, _FILE_FLAGS, dir_fd=folder)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._refused(sha256, error) from error
        finally:
            os.close(folder)
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DamagedBlobError(f"Recorded blob {sha256} in {self.root} is no regular file: not read")
            return file.read()

    def _refused(self, sha256: str, error: OSError) -> Exception:
        """The error for a blob that could not be opened: refused (damaged) unless access itself failed."""
        if isinstance(error, PermissionError):
            return AuditStoreError(f"Cannot read blob {sha256} in {self.root}: {error}")
        return DamagedBlobError(f"Recorded blob {sha256} in {self.root} cannot be opened as a file: {error}")

    def files(self) -> Iterator[Path]:
        """Every blob file, temporary and damaged ones included; symlinked folders are not followed."""
        if self.root.is_dir():
            for folder in sorted(os.scandir(self.root), key=lambda entry: entry.name):
                if folder.is_dir(follow_symlinks=False):
                    yield from sorted(Path(folder.path).iterdir())
