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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select

from datapipelines.keys import key_for, type_name_of

from ._db import UTC, CatalogError, to_db, upsert
from .content import canonical_json, flatten
from .counts import Counts

if TYPE_CHECKING:
    from .sink import Catalog

FILE_SOURCE = "file:"
_DELETE_CHUNK = 500


class _Invalid(Exception):
    """Why one metadata file cannot be catalogued."""


def generate(
    catalog: Catalog,
    folder: str | Path,
    *,
    key: str = "id",
    required: Iterable[str] = (),
    type: Any = "document",
    retrieved_field: str = "retrieved_at",
    prune: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Counts:
    """Add new records, update changed ones, and count what was skipped or invalid.

    ``key`` names the unique field (after flattening); ``required`` fields must
    be present and not null. ``retrieved_at`` comes from ``retrieved_field``
    (ISO 8601) or, without it, the file's modification time. Nothing is deleted
    unless ``prune=True``: then records of ``type`` whose file is gone, or now
    holds another key, are removed. ``progress(done, total)`` is called per file.
    All writes happen in one transaction.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CatalogError(f"Metadata folder {str(root)!r} does not exist or is not a folder")
    paths = sorted(path for path in root.rglob("*.json") if path.is_file())
    required = tuple(required)
    now = to_db(catalog._clock())
    counts = Counts()
    rows: dict[str, dict[str, Any]] = {}
    keys_by_file: dict[str, str] = {}
    for done, path in enumerate(paths, 1):
        name = path.relative_to(root).as_posix()
        try:
            row = _read(path, name, type, key, required, retrieved_field, now)
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
        existing = {
            found.key: found
            for found in connection.execute(
                select(table.c.key, table.c.sha256, table.c.source).where(table.c.type == type_name_of(type))
            )
        }
        changed = []
        for record_key, row in rows.items():
            old = existing.get(record_key)
            if old is None:
                counts.added += 1
            elif (old.sha256, old.source) == (row["sha256"], row["source"]):
                counts.skipped += 1
                continue
            else:
                counts.updated += 1
            changed.append(row)
        upsert(connection, table, changed)
        if prune:
            files = {path.relative_to(root).as_posix() for path in paths}
            stale = _stale(existing.values(), rows, keys_by_file, files)
            if stale and not paths:
                raise CatalogError(
                    f"No JSON files below {str(root)!r}: refusing to prune all {len(stale)} records "
                    "generated from files (is it the right folder?)"
                )
            for start in range(0, len(stale), _DELETE_CHUNK):
                connection.execute(delete(table).where(table.c.key.in_(stale[start : start + _DELETE_CHUNK])))
            counts.deleted = len(stale)
    return counts


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
