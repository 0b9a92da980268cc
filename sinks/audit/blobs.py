"""Content-addressed blob files: each payload and request body stored once, named by its sha256."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from datapipelines.errors import DamagedEntryError, NotFoundError

# The package's logger: one name configures the whole recorder.
LOGGER = logging.getLogger(__package__)

BLOBS = "blobs"
# A blob whose mtime is younger than this needs no refresh to survive ``gc`` (min_age 60 by default).
FRESH_BLOB_SECONDS = 1.0


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
        try:
            found = os.stat(path)
        except FileNotFoundError:
            pass
        else:
            if found.st_size == len(data):
                # Refresh an old mtime: gc leaves recently used blobs alone while rows commit.
                if time.time() - found.st_mtime > FRESH_BLOB_SECONDS:
                    os.utime(path)
                return
        temporary = os.path.join(folder, f".{sha256}.{os.getpid()}.{threading.get_ident()}.tmp")
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        try:
            file = open(temporary, "wb")  # noqa: SIM115 - closed below, after a retry
        except FileNotFoundError:
            # The folder went away since it was seen (blobs removed by hand): make it again.
            self._folders.discard(folder)
            os.makedirs(folder, exist_ok=True)
            file = open(temporary, "wb")  # noqa: SIM115
        with file:
            file.write(data)
        os.replace(temporary, path)

    def read(self, sha256: str) -> bytes:
        """The bytes stored under ``sha256``; DamagedBlobError if they do not match it."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"Recorded blob {sha256} is missing from {self.root}") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, path.with_name(sha256 + ".damaged"))
            LOGGER.warning("Blob %s is damaged: moved aside to %s.damaged, not served", path, sha256)
            damaged = DamagedBlobError(f"Recorded blob {sha256} is damaged (its bytes differ): not served")
            damaged.sha256 = sha256
            raise damaged
        return data

    def check(self, sha256: str) -> str:
        """ "ok", "missing" or "damaged"."""
        try:
            data = self.path(sha256).read_bytes()
        except FileNotFoundError:
            return "missing"
        return "ok" if hashlib.sha256(data).hexdigest() == sha256 else "damaged"

    def files(self) -> Iterator[Path]:
        """Every blob file, temporary and damaged ones included."""
        if self.root.is_dir():
            for folder in sorted(self.root.iterdir()):
                if folder.is_dir():
                    yield from sorted(folder.iterdir())
