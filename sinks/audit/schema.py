"""The SQLite side of a recorder: tables, statements, the rows they take and connection setup."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from datapipelines.errors import DataPipelinesError
from datapipelines.remote import REDACTED, RawResponse, is_secret_name, mask_secrets

DATABASE = "audit.sqlite"
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    meta TEXT NOT NULL DEFAULT '{}',
    started_at REAL NOT NULL,
    ended_at REAL,
    pid INTEGER,
    host TEXT,
    implicit INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    method TEXT NOT NULL,
    target TEXT NOT NULL,
    params TEXT NOT NULL,
    headers TEXT NOT NULL,
    body_sha256 TEXT,
    first_seen REAL NOT NULL,
    as_of_bucket TEXT,
    cache_tag TEXT
);
CREATE TABLE IF NOT EXISTS responses (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL REFERENCES requests(id),
    session_id TEXT REFERENCES sessions(id),
    status INTEGER NOT NULL,
    content_type TEXT,
    headers TEXT NOT NULL,
    url TEXT NOT NULL,
    elapsed REAL NOT NULL,
    attempts INTEGER NOT NULL,
    fetched_at REAL NOT NULL,
    recorded_at REAL NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL
);
-- Blobs replay found damaged: which response needed it, and when.
CREATE TABLE IF NOT EXISTS damaged (
    sha256 TEXT NOT NULL,
    response_id INTEGER,
    request_id TEXT,
    found_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_request ON responses(request_id, id);
CREATE INDEX IF NOT EXISTS responses_by_session ON responses(session_id);
"""
INSERT_REQUEST = (
    "INSERT OR IGNORE INTO requests (id, source, method, target, params, headers, body_sha256, first_seen, "
    "as_of_bucket, cache_tag) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_VERSION_1_TABLES = ("sessions", "requests", "responses")
# Columns added after version 1, appended (ALTER TABLE) to directories made before them.
_ADDED_COLUMNS = {"requests": ("as_of_bucket TEXT", "cache_tag TEXT")}
INSERT_RESPONSE = (
    "INSERT INTO responses (request_id, session_id, status, content_type, headers, url, elapsed, attempts, "
    "fetched_at, recorded_at, sha256, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RESPONSE_COLUMNS = (
    "r.id, r.request_id, r.session_id, r.status, r.content_type, r.headers, r.url, r.elapsed, r.attempts, "
    "r.fetched_at, r.recorded_at, r.sha256, r.size, q.source, q.method, q.target, q.params, q.headers, "
    "q.body_sha256, q.as_of_bucket, q.cache_tag"
)
_INSERT_SESSION = (
    "INSERT OR IGNORE INTO sessions (id, name, meta, started_at, pid, host, implicit) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
END_SESSION = "UPDATE sessions SET ended_at = ? WHERE id = ?"
INSERT_DAMAGED = "INSERT INTO damaged (sha256, response_id, request_id, found_at) VALUES (?, ?, ?, ?)"


def replay_statement(in_session: bool = False, as_of: bool = False) -> str:
    """The SELECT of the answer to replay for a request id (then the session id, then the time).

    Newest 2xx answer first; without one, the newest answer (whose status explains the miss).
    ``in_session`` and ``as_of`` pin it to the answers of one session, or fetched by a time.
    """
    pins = (" AND r.session_id = ?" if in_session else "") + (" AND r.fetched_at <= ?" if as_of else "")
    return (
        f"SELECT {_RESPONSE_COLUMNS} FROM responses r JOIN requests q ON q.id = r.request_id "
        f"WHERE r.request_id = ?{pins} ORDER BY r.status BETWEEN 200 AND 299 DESC, r.id DESC LIMIT 1"
    )


HOST = socket.gethostname()


class AuditStoreError(DataPipelinesError):
    """An audit directory, database or blob cannot be used; names the path (OS or SQLite error as cause)."""


_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode

# An argument that is one assignment: ``--api-token=...``, ``-p=...``, ``DB_PASSWORD=...``.
_ASSIGNED = re.compile(r"-{0,2}[A-Za-z0-9_.-]+")
# Inside any other argument: a URL's password, and query-string parameters.
_URL_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]+@")
_PARAMETER = re.compile(r"(?<=[?&;])([^=&;#]+)=([^&;#]*)")


def masked_argv(argv: Sequence[str]) -> list[str]:
    """The process arguments as the implicit session records them, credentials masked.

    The rule of the request headers (``is_secret_name``) applied to flags in both
    forms (``--api-token=...``, and ``--api-token ...``: the next argument unless it
    starts with ``--``), to
    ``NAME=value`` arguments, to query-string parameters, and to URL passwords.
    """
    masked = []
    value_follows = False
    for argument in argv:
        if value_follows and not argument.startswith("--"):  # "--" starts the next flag, not a value
            masked.append(REDACTED)
            value_follows = False
            continue
        masked.append(_masked_argument(argument))
        value_follows = argument.startswith("-") and "=" not in argument and is_secret_name(argument)
    return masked


def _masked_argument(argument: str) -> str:
    name, equals, value = argument.partition("=")
    if equals and _ASSIGNED.fullmatch(name):
        return f"{name}={REDACTED if is_secret_name(name) else _masked_argument(value)}"
    argument = _URL_PASSWORD.sub(rf"\g<1>{REDACTED}@", argument)
    return _PARAMETER.sub(lambda m: f"{m[1]}={REDACTED}" if is_secret_name(m[1]) else m[0], argument)


def session_row(
    session_id: str, name: str, meta: Mapping[str, Any], implicit: bool
) -> tuple[str, tuple[Any, ...]]:
    """The statement inserting a session's row (unless it exists) and its arguments."""
    row = (session_id, name, _dumps(dict(meta)), time.time(), os.getpid(), HOST, int(implicit))
    return _INSERT_SESSION, row


def connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection to the recorder's database; transactions are explicit (``BEGIN IMMEDIATE``)."""
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode: a commit survives the process being killed (not power loss).
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    return db


def create_tables(db: sqlite3.Connection) -> None:
    """Create the tables and indexes that do not exist yet, in the caller's transaction.

    A store that has a schema version but lacks a table every version had was damaged
    or tampered with: recreating the table would show it as empty, so it is an error.
    """
    if db.execute("PRAGMA user_version").fetchone()[0] >= 1:
        present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        missing = [table for table in _VERSION_1_TABLES if table not in present]
        if missing:
            raise sqlite3.DatabaseError(f"the audit store lacks its table(s) {', '.join(missing)}")
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    _add_columns(db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _add_columns(db: sqlite3.Connection) -> None:
    """Bring a directory made by an older version up to date; its rows keep their values."""
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column in columns:
            if column.split()[0] not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")


def partition_columns(partition: Any) -> tuple[str | None, str | None]:
    """The ``as_of_bucket`` and ``cache_tag`` columns of a request's partition pairs."""
    given = dict(partition)
    return given.get("as_of_bucket"), given.get("cache_tag")


def partition_pairs(as_of_bucket: str | None, cache_tag: str | None) -> tuple[tuple[str, str], ...]:
    """The partition pairs of a request row's ``as_of_bucket`` and ``cache_tag`` columns."""
    named = (("as_of_bucket", as_of_bucket), ("cache_tag", cache_tag))
    return tuple((name, value) for name, value in named if value is not None)


class Recorded(NamedTuple):
    """One response to record, identified and hashed; its rows are built when it is committed."""

    response: RawResponse
    request_id: str
    source: str
    method: str
    target: str
    params: Any
    headers: Mapping[str, str]
    body: bytes | None
    body_sha256: str | None
    sha256: str
    session_id: str
    recorded_at: float
    partition: Any = ()

    def rows(self) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        """The request row and the response row."""
        response, now = self.response, self.recorded_at
        request_row = (
            self.request_id,
            self.source,
            self.method,
            self.target,
            _dumps([list(p) for p in self.params]),
            _dumps(mask_secrets(self.headers)),
            self.body_sha256,
            now,
            *partition_columns(self.partition),
        )
        response_row = (
            self.request_id,
            self.session_id,
            response.status_code,
            response.content_type,
            _dumps(mask_secrets(dict(response.headers))),
            response.url,
            response.elapsed,
            response.attempts,
            response.fetched_at or now,
            now,
            self.sha256,
            len(response.payload),
        )
        return request_row, response_row
