"""AuditRecorder: every remote answer recorded byte for byte, and replayable offline.

Layout of ``directory``::

    audit.sqlite          sessions, requests and responses (SQLite, WAL mode)
    blobs/ab/abcdef...    each payload and request body once, named by its sha256

A request row is the deterministic identity of a request (see
:func:`datapipelines.remote.request_id`); each answer is a response row linked to
the request and to the session it was made in. Calls made outside
``pipeline.session(...)`` belong to an implicit session per process, named
``process <pid>@<host>``.

As a sink it accepts RawResponse, so the pipeline hands it the exact bytes before
they are parsed. As a source it provides RawResponse: the newest 2xx response
recorded for the query's request id. Error answers are recorded (they explain a
run) but never replayed. A blob whose bytes no longer match its sha256 is never
served: it is moved aside to ``<sha256>.damaged`` and the request is not found,
so a live pipeline fetches it again and an offline one raises NotFoundError.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from datapipelines.context import PipelineContext
from datapipelines.errors import ConfigurationError, NotFoundError, type_name
from datapipelines.pipeline import current_session
from datapipelines.remote import RawResponse, RemoteQueryError, mask_secrets, request_for
from datapipelines.sink import DataSink
from datapipelines.source import DataSource

LOGGER = logging.getLogger(__name__)

DATABASE = "audit.sqlite"
BLOBS = "blobs"
SCHEMA_VERSION = 1
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
    first_seen REAL NOT NULL
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
CREATE INDEX IF NOT EXISTS responses_by_request ON responses(request_id, id);
CREATE INDEX IF NOT EXISTS responses_by_session ON responses(session_id);
"""
_INSERT_REQUEST = (
    "INSERT OR IGNORE INTO requests (id, source, method, target, params, headers, body_sha256, first_seen) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_RESPONSE = (
    "INSERT INTO responses (request_id, session_id, status, content_type, headers, url, elapsed, attempts, "
    "fetched_at, recorded_at, sha256, size) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_RESPONSE_COLUMNS = (
    "r.id, r.request_id, r.session_id, r.status, r.content_type, r.headers, r.url, r.elapsed, r.attempts, "
    "r.fetched_at, r.recorded_at, r.sha256, r.size, q.source, q.method, q.target, q.params, q.headers, "
    "q.body_sha256"
)


class DamagedBlobError(NotFoundError):
    """A recorded payload no longer matches its sha256; it was moved aside, never served."""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class BlobStore:
    """Content-addressed files: ``root/ab/abcdef...``, each written once, atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256

    def write(self, data: bytes) -> str:
        """Store ``data`` (if not already there) and return its sha256."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path(sha256)
        try:
            if path.stat().st_size == len(data):
                # Refresh the mtime: gc leaves recently used blobs alone while rows commit.
                os.utime(path)
                return sha256
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{sha256}.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, path)
        return sha256

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
            raise DamagedBlobError(f"Recorded blob {sha256} is damaged (its bytes do not match); not served")
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


class AuditRecorder(DataSource, DataSink):
    """Records RawResponses (a sink) and replays them (a source); see the module docstring.

    ``replay=False`` makes it record only, never answer. Safe to share between
    threads, and between processes that open the same directory.
    """

    def __init__(
        self, directory: str | os.PathLike[str], *, replay: bool = True, busy_timeout: float = 30.0
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.directory / BLOBS)
        self.replay = replay
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0
        self._known_sessions: set[str] = set()
        self._implicit: dict[int, str] = {}
        with self._transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"AuditRecorder({str(self.directory)!r})"

    # -- connection -------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.directory / DATABASE

    def _connection(self) -> sqlite3.Connection:
        # One connection per process: SQLite connections must not cross a fork.
        if self._db is None or self._db_pid != os.getpid():
            db = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the process being killed (not power loss).
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            self._db, self._db_pid = db, os.getpid()
            self._known_sessions.clear()
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection().execute(sql, tuple(args)).fetchall()

    def close(self) -> None:
        """End this process's implicit session and close the database."""
        with self._lock:
            session = self._implicit.pop(os.getpid(), None)
            if self._db is not None and self._db_pid == os.getpid():
                if session is not None:
                    self._db.execute("UPDATE sessions SET ended_at = ? WHERE id = ?", (time.time(), session))
                self._db.close()
            self._db = None

    def __enter__(self) -> AuditRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sessions -----------------------------------------------------------------
    def open_session(self, session_id: str, name: str, meta: Mapping[str, Any]) -> None:
        with self._transaction() as db:
            self._insert_session(db, session_id, name, meta, implicit=False)

    def close_session(self, session_id: str) -> None:
        with self._transaction() as db:
            db.execute("UPDATE sessions SET ended_at = ? WHERE id = ?", (time.time(), session_id))

    def _insert_session(
        self, db: sqlite3.Connection, session_id: str, name: str, meta: Mapping[str, Any], implicit: bool
    ) -> None:
        db.execute(
            "INSERT OR IGNORE INTO sessions (id, name, meta, started_at, pid, host, implicit) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                session_id,
                name,
                _dumps(dict(meta)),
                time.time(),
                os.getpid(),
                socket.gethostname(),
                int(implicit),
            ),
        )
        self._known_sessions.add(session_id)

    def _session_for_write(self, db: sqlite3.Connection) -> str:
        session_id = current_session()
        if session_id is None:
            session_id = self._implicit.get(os.getpid())
            if session_id is None:
                session_id = self._implicit[os.getpid()] = uuid.uuid4().hex
                meta = {"argv": sys.argv}
                name = f"process {os.getpid()}@{socket.gethostname()}"
                self._insert_session(db, session_id, name, meta, implicit=True)
        elif session_id not in self._known_sessions:
            # Opened by a pipeline this recorder is not part of: record it, nameless.
            self._insert_session(db, session_id, "(unnamed)", {}, implicit=False)
        return str(session_id)

    # -- recording -----------------------------------------------------------------
    def record(self, response: RawResponse, context: PipelineContext | None = None) -> str:
        """Record one response (any status) in the current session; return its request id."""
        return self.record_many([response], context)[0]

    def record_many(
        self, responses: Iterable[RawResponse], context: PipelineContext | None = None
    ) -> list[str]:
        """Record several responses in one transaction; return their request ids."""
        rows = [self._rows_for(response, context) for response in responses]
        with self._transaction() as db:
            session_id = self._session_for_write(db)
            for request_row, response_row in rows:
                db.execute(_INSERT_REQUEST, request_row)
                db.execute(_INSERT_RESPONSE, (response_row[0], session_id, *response_row[1:]))
        return [request_row[0] for request_row, _ in rows]

    def _rows_for(self, response: RawResponse, context: PipelineContext | None) -> tuple[tuple, tuple]:
        if not isinstance(response, RawResponse):
            raise ConfigurationError(f"{self!r} records RawResponse, not {type_name(type(response))}")
        request_id, source, method, target = (
            response.request_id,
            response.source,
            response.method,
            response.target,
        )
        params, headers, body = response.params, dict(response.request_headers), response.request_body
        if not request_id:
            # A response built by hand: the query it answered names the request.
            query = context.get(PipelineContext.Keys.QUERY) if context is not None else None
            if query is None:
                raise ConfigurationError(
                    f"{self!r} cannot record a RawResponse from {response.url!r} "
                    "without a request_id or a query"
                )
            request = request_for(query)
            request_id, source, method, target = request.id, request.source, request.method, request.target
            params, headers, body = request.params, dict(request.headers), request.body
        # Blobs first: a committed row always finds its bytes; a crash leaves at most an orphan blob.
        sha256 = self.blobs.write(response.payload)
        body_sha256 = self.blobs.write(body) if body is not None else None
        now = time.time()
        request_row = (
            request_id,
            source,
            method,
            target,
            _dumps([list(p) for p in params]),
            _dumps(mask_secrets(headers)),
            body_sha256,
            now,
        )
        response_row = (
            request_id,
            response.status_code,
            response.content_type,
            _dumps(mask_secrets(dict(response.headers))),
            response.url,
            response.elapsed,
            response.attempts,
            response.fetched_at or now,
            now,
            sha256,
            len(response.payload),
        )
        return request_row, response_row

    @DataSink.dispatch
    def put(self, type: Any, item: Any, context: PipelineContext | None = None) -> None:
        """Record one RawResponse."""

    @DataSink.dispatch
    def put_many(self, type: Any, items: Iterable[Any], context: PipelineContext | None = None) -> None:
        """Record several RawResponses in one transaction."""

    @put.register(RawResponse)
    def _put_raw(self, item: RawResponse, context: PipelineContext | None = None) -> None:
        self.record(item, context)

    @put_many.register(RawResponse)
    def _put_many_raw(self, items: Iterable[RawResponse], context: PipelineContext | None = None) -> None:
        self.record_many(items, context)

    # -- replaying ------------------------------------------------------------------------
    @property
    def provides(self) -> Any:
        return {RawResponse} if self.replay else set()

    @DataSource.dispatch
    def get(self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        """Replay the newest 2xx response recorded for the query."""

    @DataSource.dispatch
    def get_many(self, type: Any, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        """Recorded answers are one per request; many-item queries are not found here."""

    @get.register(RawResponse)
    def _get_raw(self, query: Mapping[str, Any], context: PipelineContext | None = None) -> RawResponse:
        if not self.replay:
            raise NotFoundError(f"{self!r} records only (replay=False)")
        try:
            request_id = request_for(query).id
        except RemoteQueryError as error:
            raise NotFoundError(f"{self!r}: not a remote query ({error})") from None
        return self.replayed(request_id, query)

    @get_many.register(RawResponse)
    def _get_many_raw(self, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        raise NotFoundError(f"{self!r} replays one request per query, not many: {query!r}")

    def replayed(self, request_id: str, query: Any = None) -> RawResponse:
        """The newest 2xx response recorded for ``request_id``, as a RawResponse."""
        rows = self._read(
            f"SELECT {_RESPONSE_COLUMNS} FROM responses r JOIN requests q ON q.id = r.request_id "
            "WHERE r.request_id = ? AND r.status BETWEEN 200 AND 299 ORDER BY r.id DESC LIMIT 1",
            (request_id,),
        )
        if not rows:
            last = self._read(
                "SELECT status FROM responses WHERE request_id = ? ORDER BY id DESC LIMIT 1", (request_id,)
            )
            why = f"only error answers (last: {last[0][0]})" if last else "never"
            raise NotFoundError(
                f"Request {request_id[:12]} ({query!r}) was {why} recorded in {self.directory}"
            )
        return self._response(rows[0])

    def _response(self, row: tuple[Any, ...]) -> RawResponse:
        (
            _,
            request_id,
            _,
            status,
            content_type,
            headers,
            url,
            elapsed,
            attempts,
            fetched_at,
            _,
            sha256,
            _,
            source,
            method,
            target,
            params,
            request_headers,
            body_sha256,
        ) = row
        return RawResponse(
            payload=self.blobs.read(sha256),
            status_code=status,
            content_type=content_type,
            headers=json.loads(headers),
            url=url,
            elapsed=elapsed,
            request_id=request_id,
            method=method,
            params=tuple(tuple(pair) for pair in json.loads(params)),
            source=source,
            target=target,
            request_body=self.blobs.read(body_sha256) if body_sha256 else None,
            request_headers=json.loads(request_headers),
            attempts=attempts,
            fetched_at=fetched_at,
            replayed=True,
        )

    # -- inspection and maintenance ------------------------------------------------------
    def sessions(self) -> list[dict[str, Any]]:
        """Every session, oldest first, with counts of its responses, errors and bytes."""
        rows = self._read(
            "SELECT s.id, s.name, s.meta, s.started_at, s.ended_at, s.pid, s.host, s.implicit, "
            "COUNT(r.id), COALESCE(SUM(r.status NOT BETWEEN 200 AND 299), 0), COALESCE(SUM(r.size), 0) "
            "FROM sessions s LEFT JOIN responses r ON r.session_id = s.id GROUP BY s.id ORDER BY s.started_at"
        )
        keys = (
            "id",
            "name",
            "meta",
            "started_at",
            "ended_at",
            "pid",
            "host",
            "implicit",
            "responses",
            "errors",
            "bytes",
        )
        sessions = [dict(zip(keys, row, strict=False)) for row in rows]
        for session in sessions:
            session["meta"] = json.loads(session["meta"])
            session["implicit"] = bool(session["implicit"])
        return sessions

    def find_session(self, name_or_id: str) -> dict[str, Any]:
        """The session with this id, unique id prefix, or name (the newest of that name)."""
        sessions = self.sessions()
        exact = [s for s in sessions if s["id"] == name_or_id]
        prefixed = [s for s in sessions if s["id"].startswith(name_or_id)]
        named = [s for s in sessions if s["name"] == name_or_id]
        for matches in (exact, prefixed if len(prefixed) == 1 else [], named[-1:]):
            if matches:
                return matches[0]
        raise NotFoundError(f"No session {name_or_id!r} in {self.directory} ({len(sessions)} sessions)")

    def summary(self, session_id: str) -> dict[str, Any]:
        """What one session did: requests, statuses, bytes, time, per source."""
        session = self.find_session(session_id)
        rows = self._read(
            "SELECT q.source, r.status, COUNT(*), COUNT(DISTINCT r.request_id), SUM(r.size), SUM(r.elapsed), "
            "COUNT(DISTINCT r.sha256) FROM responses r JOIN requests q ON q.id = r.request_id "
            "WHERE r.session_id = ? GROUP BY q.source, r.status ORDER BY q.source, r.status",
            (session["id"],),
        )
        keys = ("source", "status", "responses", "requests", "bytes", "elapsed", "blobs")
        return {**session, "by_status": [dict(zip(keys, row, strict=False)) for row in rows]}

    def find_request(self, prefix: str) -> str:
        """The full request id starting with ``prefix`` (at least 6 characters, unique)."""
        if len(prefix) < 6:
            raise ConfigurationError(f"Give at least 6 characters of a request id, got {prefix!r}")
        rows = self._read(
            "SELECT id FROM requests WHERE id >= ? AND id < ? LIMIT 2", (prefix, prefix + "\uffff")
        )
        if not rows:
            raise NotFoundError(f"No request {prefix!r} in {self.directory}")
        if len(rows) > 1:
            raise ConfigurationError(f"Request id prefix {prefix!r} is ambiguous; give more characters")
        return str(rows[0][0])

    def request_history(self, request_id: str) -> dict[str, Any]:
        """A request and every response recorded for it, oldest first."""
        request_id = self.find_request(request_id)
        ((source, method, target, params, headers, body_sha256, first_seen),) = self._read(
            "SELECT source, method, target, params, headers, body_sha256, first_seen "
            "FROM requests WHERE id = ?",
            (request_id,),
        )
        keys = (
            "id",
            "session_id",
            "status",
            "content_type",
            "headers",
            "url",
            "elapsed",
            "attempts",
            "fetched_at",
            "recorded_at",
            "sha256",
            "size",
        )
        responses = [
            dict(zip(keys, row, strict=False))
            for row in self._read(
                "SELECT id, session_id, status, content_type, headers, url, elapsed, attempts, fetched_at, "
                "recorded_at, sha256, size FROM responses WHERE request_id = ? ORDER BY id",
                (request_id,),
            )
        ]
        for response in responses:
            response["headers"] = json.loads(response["headers"])
        return {
            "id": request_id,
            "source": source,
            "method": method,
            "target": target,
            "params": json.loads(params),
            "headers": json.loads(headers),
            "body_sha256": body_sha256,
            "first_seen": first_seen,
            "responses": responses,
        }

    def _referenced(self) -> set[str]:
        rows = self._read(
            "SELECT sha256 FROM responses UNION SELECT body_sha256 FROM requests "
            "WHERE body_sha256 IS NOT NULL"
        )
        return {row[0] for row in rows}

    def verify(self) -> dict[str, list[str]]:
        """Recompute the sha256 of every referenced blob; sha256s listed under ok, missing, damaged."""
        report: dict[str, list[str]] = {"ok": [], "missing": [], "damaged": []}
        for sha256 in sorted(self._referenced()):
            report[self.blobs.check(sha256)].append(sha256)
        return report

    def gc(self, min_age: float = 60.0) -> list[str]:
        """Delete blob files no row references, older than ``min_age`` seconds; return their names.

        The write lock is held throughout, and recorders refresh a blob's mtime
        before committing the row that uses it, so a blob being recorded is never
        taken: ``min_age`` covers the moment between the two.
        """
        removed = []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT sha256 FROM responses UNION SELECT body_sha256 FROM requests "
                "WHERE body_sha256 IS NOT NULL"
            ).fetchall()
            referenced = {row[0] for row in rows}
            deadline = time.time() - min_age
            for path in self.blobs.files():
                if path.name not in referenced and path.stat().st_mtime <= deadline:
                    path.unlink()
                    removed.append(path.name)
        return removed

    def export(self, session: str, directory: str | os.PathLike[str]) -> dict[str, Any]:
        """Copy one session, its requests and their blobs into a new recorder at ``directory``.

        The copy is an AuditRecorder itself, so it replays that session anywhere.
        """
        found = self.find_session(session)
        if (Path(directory) / DATABASE).resolve() == self.path.resolve():
            raise ConfigurationError(f"Cannot export session {found['id']} into its own recorder {directory}")
        target = AuditRecorder(directory)
        responses = self._read("SELECT * FROM responses WHERE session_id = ? ORDER BY id", (found["id"],))
        request_ids = sorted({row[1] for row in responses})
        requests = [
            row for rid in request_ids for row in self._read("SELECT * FROM requests WHERE id = ?", (rid,))
        ]
        for sha256 in {row[11] for row in responses} | {row[6] for row in requests if row[6]}:
            target.blobs.write(self.blobs.read(sha256))
        session_row = self._read("SELECT * FROM sessions WHERE id = ?", (found["id"],))[0]
        with target._transaction() as db:
            db.execute("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?, ?, ?, ?, ?)", session_row)
            db.executemany(_INSERT_REQUEST, requests)
            db.executemany(_INSERT_RESPONSE, [row[1:] for row in responses])
        target.close()
        return {
            "session": found["id"],
            "name": found["name"],
            "requests": len(requests),
            "responses": len(responses),
            "directory": str(directory),
        }
