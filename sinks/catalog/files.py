"""Generate catalogue records from JSON metadata files, as a scraper leaves them on disk.

Each ``*.json`` file below a folder describes one document: a unique key field,
required fields, anything else. Nested objects are flattened into fields
(``{"meta": {"lang": "de"}}`` gives ``meta_lang``). A file's record is keyed
like a pipeline keys the same document (``key_for(type, {key: value})``); its
size and SHA-256 are those of the file's canonical JSON, so re-indenting a file
is not a change. Files that cannot be read are counted and named, never fatal.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import Engine, Table, select
from sqlalchemy.engine import Connection

from datapipelines.keys import key_for, type_name_of

from ._db import UTC, CatalogError, to_db
from .content import canonical_json, flatten
from .counts import Counts

FILE_SOURCE = "file:"
# Why generate soft-deletes a record, in mmmeta's words.
META_MISSING = "meta-missing"  # its metadata file is gone (ensure=True)
ORIGINAL_MISSING = "original-missing"  # the actual file it names is gone (ensure_files=True)
# The fields of a record indexed from a file itself (no_meta=True).
FILE_FIELDS = ("file_name", "file_path", "file_size", "modified_at", "content_hash")
_READ_CHUNK = 1 << 20


class _Invalid(Exception):
    """Why one metadata file cannot be catalogued."""


class RecordWriter(Protocol):
    """What :func:`generate` writes through: the catalogue (named so, this module never imports it)."""

    engine: Engine
    table: Table
    _clock: Callable[[], datetime.datetime]

    def _apply(
        self, connection: Connection, rows: Mapping[str, dict[str, Any]], now: datetime.datetime
    ) -> dict[str, str]: ...

    def _soft_delete(
        self, connection: Connection, keys: Collection[str], reason: str, now: datetime.datetime
    ) -> int: ...

    def _hard_delete(self, connection: Connection, keys: Collection[str], now: datetime.datetime) -> int: ...


def generate(
    catalog: RecordWriter,
    folder: str | Path,
    *,
    key: str | None = None,
    required: Iterable[str] = (),
    type: Any = "document",
    retrieved_field: str = "retrieved_at",
    prune: bool = False,
    ensure: bool = False,
    ensure_files: bool = False,
    file_field: str = "file_name",
    files_root: str | Path | None = None,
    no_meta: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Counts:
    """Add new records, update changed ones, and count what was skipped, deleted or invalid.

    ``key`` names the unique field (after flattening; default ``id``, or
    ``file_path`` with ``no_meta``); ``required`` fields must be present and not
    null. ``retrieved_at`` comes from ``retrieved_field`` (ISO 8601) or, without
    it, the file's modification time. Records of ``type`` whose file is gone (or
    now holds another key) are removed with ``prune=True``, soft-deleted as
    ``meta-missing`` with ``ensure=True``, and otherwise kept. ``ensure_files``
    soft-deletes, as ``original-missing``, records whose actual file (the
    ``file_field`` path, below ``files_root``, default ``folder``) is gone, and
    restores them when it is back. ``no_meta`` catalogues every file below
    ``folder`` itself, without JSON metadata (fields: ``FILE_FIELDS``).
    ``progress(done, total)`` is called per file. All writes happen in one transaction.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CatalogError(f"Metadata folder {str(root)!r} does not exist or is not a folder")
    if prune and ensure:
        raise CatalogError("generate(prune=True) deletes what ensure=True soft-deletes: choose one")
    key = key or ("file_path" if no_meta else "id")
    if no_meta and key not in FILE_FIELDS:
        raise CatalogError(f"With no_meta, the key is one of {', '.join(FILE_FIELDS)}; got {key!r}")
    originals = Path(files_root) if files_root is not None else root
    if no_meta:
        paths = sorted(path for path in root.rglob("*") if path.is_file())
    else:
        paths = sorted(path for path in root.rglob("*.json") if path.is_file())
    required = tuple(required)
    now = to_db(catalog._clock())
    counts = Counts()
    rows: dict[str, dict[str, Any]] = {}
    keys_by_file: dict[str, str] = {}
    for done, path in enumerate(paths, 1):
        name = path.relative_to(root).as_posix()
        try:
            if no_meta:
                row = _index(path, name, type, key, now)
            else:
                row = _read(path, name, type, key, required, retrieved_field, now)
                if ensure_files and not _original_exists(originals, row["fields"], file_field):
                    row.update(deleted_at=now, deleted_reason=ORIGINAL_MISSING)
            other = rows.get(row["key"])
            if other is not None:
                first = other["source"][len(FILE_SOURCE) :]
                raise _Invalid(f"{key}={row['query'][key]!r} is also the key of {first}")
        except _Invalid as problem:
            counts.invalid_files[name] = str(problem)
        else:
            rows[row["key"]] = row
            keys_by_file[name] = row["key"]
        if progress is not None:
            progress(done, len(paths))

    table = catalog.table
    with catalog.engine.begin() as connection:
        actions = catalog._apply(connection, rows, now)
        for action in actions.values():
            setattr(counts, action, getattr(counts, action) + 1)
        counts.skipped = len(rows) - len(actions)
        if prune or ensure:
            existing = connection.execute(
                select(table.c.key, table.c.source).where(table.c.type == type_name_of(type))
            ).all()
            files = {path.relative_to(root).as_posix() for path in paths}
            stale = _stale(existing, rows, keys_by_file, files)
            if stale and not paths:
                raise CatalogError(
                    f"No {'files' if no_meta else 'JSON files'} below {str(root)!r}: refusing to "
                    f"{'prune' if prune else 'soft-delete'} all {len(stale)} records generated from files "
                    "(is it the right folder?)"
                )
            if prune:
                counts.deleted += catalog._hard_delete(connection, stale, now)
            else:
                reason = ORIGINAL_MISSING if no_meta else META_MISSING
                counts.deleted += catalog._soft_delete(connection, stale, reason, now)
    return counts


def _original_exists(root: Path, fields: dict[str, Any], file_field: str) -> bool:
    """Whether the actual file a metadata file names is there; a name leaving ``root`` is invalid."""
    name = fields.get(file_field)
    if not isinstance(name, str) or not name:
        raise _Invalid(f"missing the file field {file_field!r} that ensure_files checks")
    target = root / name
    if Path(name).is_absolute() or not target.resolve().is_relative_to(root.resolve()):
        raise _Invalid(f"file field {file_field!r} points outside {str(root)!r}: {name!r}")
    return target.is_file()


def _index(path: Path, name: str, type_: Any, key: str, now: datetime.datetime) -> dict[str, Any]:
    """The record of a file catalogued as itself: its name, path, size, time and SHA-256."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            while chunk := file.read(_READ_CHUNK):
                digest.update(chunk)
        stat = path.stat()
    except OSError as error:
        raise _Invalid(f"cannot read the file ({error.strerror})") from None
    modified = datetime.datetime.fromtimestamp(stat.st_mtime, UTC)
    fields = {
        "file_name": path.name, "file_path": name, "file_size": stat.st_size,
        "modified_at": modified.isoformat(), "content_hash": digest.hexdigest(),
    }  # fmt: skip
    query = {key: fields[key]}
    return {
        "key": key_for(type_, query),
        "type": type_name_of(type_),
        "query": query,
        "size": stat.st_size,
        "sha256": fields["content_hash"],
        "source": FILE_SOURCE + name,
        "retrieved_at": to_db(modified),
        "last_updated": now,
        "fields": fields,
    }


def _stale(
    existing: Iterable[Any], rows: dict[str, Any], keys_by_file: dict[str, str], files: set[str]
) -> list[str]:
    """Keys of file records whose file is gone, or now holds another key.

    A file that is still there but invalid keeps its record: bad input never
    deletes data.
    """
    stale = []
    for old in existing:
        if old.key in rows or not (old.source or "").startswith(FILE_SOURCE):
            continue
        name = old.source[len(FILE_SOURCE) :]
        if name not in files or name in keys_by_file:
            stale.append(old.key)
    return stale


def _read(
    path: Path, name: str, type_: Any, key: str, required: tuple[str, ...], retrieved_field: str,
    now: datetime.datetime,
) -> dict[str, Any]:  # fmt: skip
    try:
        document = json.loads(path.read_bytes())
    except ValueError as error:
        raise _Invalid(f"not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise _Invalid(f"expected a JSON object, found {json_kind(document)}")
    try:
        fields = flatten(document)
    except ValueError as error:
        raise _Invalid(str(error)) from None
    value = fields.get(key)
    if value is None:
        raise _Invalid(f"missing the key field {key!r}")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise _Invalid(f"key field {key!r} must be a string or an integer, found {value!r}")
    missing = [field for field in required if fields.get(field) is None]
    if missing:
        raise _Invalid(f"missing required field(s) {', '.join(map(repr, missing))}")
    data = canonical_json(document).encode("utf-8")
    query = {key: value}
    return {
        "key": key_for(type_, query),
        "type": type_name_of(type_),
        "query": query,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "source": FILE_SOURCE + name,
        "retrieved_at": to_db(_retrieved_at(path, fields.get(retrieved_field), retrieved_field)),
        "last_updated": now,
        "fields": fields,
    }


def _retrieved_at(path: Path, value: Any, field: str) -> datetime.datetime:
    if value is None:
        return datetime.datetime.fromtimestamp(path.stat().st_mtime, UTC)
    try:
        # Python 3.10 does not read a trailing "Z" itself.
        parsed = datetime.datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except (TypeError, ValueError, AttributeError):
        raise _Invalid(f"field {field!r} is not an ISO 8601 date: {value!r}") from None
    return parsed


def json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
