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

By default a record is committed before ``put`` returns. ``write_behind=True``
hands blobs and rows to one background thread per recorder and process, which
commits them in batches shortly after (see :class:`AuditRecorder`).
"""

from __future__ import annotations

import atexit
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
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from datapipelines.context import PipelineContext
from datapipelines.errors import ConfigurationError, DataPipelinesError, NotFoundError, type_name
from datapipelines.pipeline import current_session
from datapipelines.remote import RawResponse, RemoteQueryError, mask_secrets, request_for
from datapipelines.sink import DataSink
from datapipelines.source import DataSource

# The package's logger: one name configures the whole recorder.
LOGGER = logging.getLogger(__package__)

DATABASE = "audit.sqlite"
BLOBS = "blobs"
SCHEMA_VERSION = 1
# A blob whose mtime is younger than this needs no refresh to survive ``gc`` (min_age 60 by default).
FRESH_BLOB_SECONDS = 1.0
# Most writes one background transaction commits.
BATCH_LIMIT = 500
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


_INSERT_SESSION = (
    "INSERT OR IGNORE INTO sessions (id, name, meta, started_at, pid, host, implicit) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_END_SESSION = "UPDATE sessions SET ended_at = ? WHERE id = ?"
# Newest 2xx answer first; without one, the newest answer (whose status explains the miss).
_REPLAY = (
    f"SELECT {_RESPONSE_COLUMNS} FROM responses r JOIN requests q ON q.id = r.request_id "
    "WHERE r.request_id = ? ORDER BY r.status BETWEEN 200 AND 299 DESC, r.id DESC LIMIT 1"
)
_HOST = socket.gethostname()


class DamagedBlobError(NotFoundError):
    """A recorded payload no longer matches its sha256; it was moved aside, never served."""


class AuditWriteError(DataPipelinesError):
    """A write-behind recorder could not commit records in the background (they are kept and retried)."""


_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _session_row(
    session_id: str, name: str, meta: Mapping[str, Any], implicit: bool
) -> tuple[str, tuple[Any, ...]]:
    row = (session_id, name, _dumps(dict(meta)), time.time(), os.getpid(), _HOST, int(implicit))
    return _INSERT_SESSION, row


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


class _Recorded(NamedTuple):
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


class _Write(NamedTuple):
    """One unit of recording: statements, then responses, committed together (their blobs first)."""

    statements: tuple[tuple[str, tuple[Any, ...]], ...]
    records: tuple[_Recorded, ...] = ()
    # Sessions whose row the statements insert: known to be in the database once committed.
    sessions: tuple[str, ...] = ()


class _Writer:
    """The write-behind thread of one recorder in one process.

    Writes wait in a FIFO queue; the thread takes them when the oldest has waited
    ``flush_interval``, when ``max_pending`` records wait, or when someone flushes,
    and commits up to BATCH_LIMIT of them in one transaction. A failed batch goes
    back to the front of the queue and the thread pauses until a caller has been
    told (``flush`` or ``submit`` raise AuditWriteError); it retries once a flush
    waits or the interval has passed (a full queue alone no longer hurries it).
    """

    def __init__(
        self,
        owner: str,
        connect: Callable[[], sqlite3.Connection],
        commit: Callable[[Sequence[_Write], sqlite3.Connection], None],
        max_pending: int,
        flush_interval: float,
    ) -> None:
        self.pid = os.getpid()
        self._owner, self._connect, self._commit = owner, connect, commit
        self._max_pending, self._interval = max_pending, flush_interval
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[tuple[float, int, _Write]] = deque()  # (queued at, records, write)
        self.pending = 0  # records queued or being written
        # Request ids with a record not yet committed: replay of those waits for a flush.
        self.pending_requests: dict[str, int] = {}
        # Sessions whose row is queued: written before any later record (the queue is FIFO).
        self.sessions: set[str] = set()
        self._submitted = self._committed = self._flush_to = 0  # counts of writes
        self._error: BaseException | None = None
        self._retrying = False  # the head of the queue failed to commit last time
        self._stopping = False
        self._alive = True
        self._thread = threading.Thread(target=self._run, name=f"{owner} writer", daemon=True)
        self._thread.start()

    # -- callers -------------------------------------------------------------------
    def submit(self, write: _Write) -> None:
        """Queue ``write``; blocks while ``max_pending`` records wait (never drops one)."""
        records = max(1, len(write.records))
        with self._cond:
            # A write larger than max_pending enters an empty queue, or it would wait forever.
            while self.pending and self.pending + records > self._max_pending:
                self._raise_error()
                self._cond.wait()
            self._raise_error()
            self._queue.append((time.monotonic(), records, write))
            self.pending += records
            for record in write.records:
                self.pending_requests[record.request_id] = self.pending_requests.get(record.request_id, 0) + 1
            self._submitted += 1
            self.sessions.update(write.sessions)
            if len(self._queue) == 1 or self.pending >= self._max_pending:
                self._cond.notify_all()

    def flush(self) -> None:
        """Wait until every write submitted so far is committed; AuditWriteError if one failed."""
        if self._committed >= self._submitted:
            return
        with self._cond:
            target = self._submitted
            self._flush_to = max(self._flush_to, target)
            self._cond.notify_all()
            while self._committed < target:
                self._raise_error()
                # Again on every wake-up: a failed batch is retried only while someone waits for it.
                self._flush_to = max(self._flush_to, target)
                self._cond.wait()

    def stop(self) -> None:
        """Commit what is queued (unless a failure is pending) and end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join()

    def _raise_error(self) -> None:
        # Called with the condition held. Telling a caller lets the thread retry.
        if self._error is None and self._alive:
            return
        error, self._error = self._error, None
        self._cond.notify_all()
        state = "kept and retried" if self._alive else "not written: the writer thread has stopped"
        cause = "the writer thread has stopped" if error is None else f"{type(error).__name__}: {error}"
        raise AuditWriteError(
            f"{self._owner} could not commit records in the background ({self.pending} waiting, "
            f"{state}): {cause}"
        ) from error

    # -- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        db: sqlite3.Connection | None = None
        try:
            while (batch := self._next_batch()) is not None:
                writes = [write for _, _, write in batch]
                try:
                    db = db or self._connect()
                    self._commit(writes, db)
                except Exception as error:
                    LOGGER.error(
                        "%s: background commit of %d writes failed", self._owner, len(writes), exc_info=True
                    )
                    if db is not None:  # the retry starts from a fresh connection
                        with contextlib.suppress(sqlite3.Error):
                            db.close()
                        db = None
                    with self._cond:
                        self._queue.extendleft(reversed(batch))
                        self._error = error
                        self._flush_to = self._committed
                        self._retrying = True
                        self._cond.notify_all()
                    continue
                self._done(batch)
        finally:
            with self._cond:
                self._alive = False
                if self.pending:
                    LOGGER.error("%s: writer stopped with %d records not written", self._owner, self.pending)
                self._cond.notify_all()
            if db is not None:
                db.close()

    def _next_batch(self) -> list[tuple[float, int, _Write]] | None:
        """The next writes to commit, once due; None when stopping (or stopped by a failure)."""
        with self._cond:
            while True:
                if self._stopping and (self._error is not None or not self._queue):
                    return None
                if self._error is None and self._queue:
                    wait = self._queue[0][0] + self._interval - time.monotonic()
                    full = self.pending >= self._max_pending and not self._retrying
                    if self._stopping or self._flush_to > self._committed or wait <= 0 or full:
                        count = min(len(self._queue), BATCH_LIMIT)
                        return [self._queue.popleft() for _ in range(count)]
                    self._cond.wait(wait)
                else:
                    self._cond.wait()

    def _done(self, batch: list[tuple[float, int, _Write]]) -> None:
        with self._cond:
            for _, records, write in batch:
                self.pending -= records
                for record in write.records:
                    left = self.pending_requests[record.request_id] - 1
                    if left:
                        self.pending_requests[record.request_id] = left
                    else:
                        del self.pending_requests[record.request_id]
            self._committed += len(batch)
            self._retrying = False
            self._cond.notify_all()


# Every recorder, for the fork and exit hooks below.
_RECORDERS: weakref.WeakSet[AuditRecorder] = weakref.WeakSet()
_exit_hook_pid = 0


def _after_fork_in_child() -> None:
    # A lock held by another thread of the parent would never be released in the child.
    for recorder in list(_RECORDERS):
        recorder._lock = threading.RLock()


def _flush_at_exit() -> None:
    """Commit what write-behind recorders still hold when the process ends normally."""
    for recorder in list(_RECORDERS):
        for attempt in (1, 2):  # the first error is reported, which lets the writer retry once
            try:
                recorder.flush()
                break
            except AuditWriteError:
                LOGGER.exception("%r: flush at exit failed (attempt %d of 2)", recorder, attempt)


def _hook_process_exit() -> None:
    """Flush at exit in this process: atexit, and multiprocessing's finalizers (its children skip atexit)."""
    global _exit_hook_pid
    if _exit_hook_pid == os.getpid():
        return
    _exit_hook_pid = os.getpid()
    atexit.register(_flush_at_exit)
    multiprocessing_util = sys.modules.get("multiprocessing.util")
    if multiprocessing_util is not None:
        multiprocessing_util.Finalize(None, _flush_at_exit, exitpriority=100)


os.register_at_fork(after_in_child=_after_fork_in_child)


class AuditRecorder(DataSource, DataSink):
    """Records RawResponses (a sink) and replays them (a source); see the module docstring.

    ``replay=False`` makes it record only, never answer. Safe to share between
    threads, and between processes that open the same directory.

    ``write_behind=True``: ``put``/``record`` compute the request id and sha256,
    queue the blobs and rows and return; one daemon thread per recorder (and
    process) commits them, many per transaction, at most ``flush_interval``
    seconds after they were queued. At most ``max_pending`` records wait: more
    block the caller until the thread catches up. ``flush()`` waits for
    everything queued; ``close_session``, ``close``, every read and a normal
    process exit flush first. A failed background commit is logged and raised by
    the next ``flush``/``put`` (AuditWriteError); its records are kept and retried.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        replay: bool = True,
        busy_timeout: float = 30.0,
        write_behind: bool = False,
        max_pending: int = 10_000,
        flush_interval: float = 0.05,
    ) -> None:
        if max_pending < 1 or flush_interval < 0:
            raise ConfigurationError(
                f"AuditRecorder needs max_pending >= 1 and flush_interval >= 0, "
                f"got max_pending={max_pending!r}, flush_interval={flush_interval!r}"
            )
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.directory / BLOBS)
        self.replay = replay
        self.write_behind = write_behind
        self._max_pending, self._flush_interval = max_pending, flush_interval
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0
        self._writer: _Writer | None = None
        self._known_sessions: set[str] = set()
        self._implicit: dict[int, str] = {}
        with self._transaction() as db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        _RECORDERS.add(self)

    def __repr__(self) -> str:
        return f"AuditRecorder({str(self.directory)!r})"

    # -- connection -------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.directory / DATABASE

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives the process being killed (not power loss).
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _connection(self) -> sqlite3.Connection:
        # One connection per process: SQLite connections must not cross a fork.
        if self._db is None or self._db_pid != os.getpid():
            self._db, self._db_pid = self._connect(), os.getpid()
            self._known_sessions.clear()
        return self._db

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _select(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._connection().execute(sql, tuple(args)).fetchall()

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a query, once everything this process recorded is committed."""
        self.flush()
        return self._select(sql, args)

    def close(self) -> None:
        """Commit what is queued, end this process's implicit session and close the database."""
        try:
            self.flush()
        finally:
            writer, self._writer = self._writer_here(), None
            if writer is not None:
                writer.stop()
            with self._lock:
                session = self._implicit.pop(os.getpid(), None)
                if self._db is not None and self._db_pid == os.getpid():
                    if session is not None:
                        self._db.execute(_END_SESSION, (time.time(), session))
                    self._db.close()
                self._db = None

    def __enter__(self) -> AuditRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------
    def _writer_here(self) -> _Writer | None:
        """This process's writer thread, if started (a writer inherited through fork is not)."""
        writer = self._writer
        return writer if writer is not None and writer.pid == os.getpid() else None

    def _submit(self, write: _Write) -> None:
        """Commit ``write`` now, or queue it for the writer thread in write-behind mode."""
        if not self.write_behind:
            with self._lock:
                self._commit((write,), self._connection())
            return
        writer = self._writer_here()
        if writer is None:
            with self._lock:
                writer = self._writer_here()
                if writer is None:
                    _hook_process_exit()
                    writer = self._writer = _Writer(
                        repr(self), self._connect, self._commit, self._max_pending, self._flush_interval
                    )
        writer.submit(write)

    def _commit(self, writes: Sequence[_Write], db: sqlite3.Connection) -> None:
        # Blobs first: a committed row always finds its bytes; a crash leaves at most an orphan blob.
        stored = set()
        for write in writes:
            for record in write.records:
                for sha256, data in (
                    (record.sha256, record.response.payload),
                    (record.body_sha256, record.body),
                ):
                    if sha256 is not None and data is not None and sha256 not in stored:
                        self.blobs.store(sha256, data)
                        stored.add(sha256)
        db.execute("BEGIN IMMEDIATE")
        try:
            for write in writes:
                for statement, args in write.statements:
                    db.execute(statement, args)
                for record in write.records:
                    request_row, response_row = record.rows()
                    db.execute(_INSERT_REQUEST, request_row)
                    db.execute(_INSERT_RESPONSE, response_row)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        for write in writes:
            self._known_sessions.update(write.sessions)

    def flush(self) -> None:
        """Wait until every record queued by this process is committed (nothing to do unless write-behind).

        Raises AuditWriteError if a background commit failed since the last call.
        """
        writer = self._writer_here()
        if writer is not None:
            writer.flush()

    @property
    def pending(self) -> int:
        """Records queued in this process and not yet committed (0 unless write-behind)."""
        writer = self._writer_here()
        return 0 if writer is None else writer.pending

    # -- sessions -----------------------------------------------------------------
    def open_session(self, session_id: str, name: str, meta: Mapping[str, Any]) -> None:
        row = _session_row(session_id, name, meta, implicit=False)
        self._submit(_Write((row,), sessions=(session_id,)))

    def close_session(self, session_id: str) -> None:
        self._submit(_Write(((_END_SESSION, (time.time(), session_id)),)))
        self.flush()

    def _session_known(self, session_id: str) -> bool:
        """Whether the session's row is committed, or queued ahead of any record made now."""
        if session_id in self._known_sessions:
            return True
        writer = self._writer_here()
        return writer is not None and session_id in writer.sessions

    def _session_for_write(self) -> tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]]:
        """The current session id, and the statement inserting its row while it is not known."""
        session_id = current_session()
        if session_id is None:
            pid = os.getpid()
            session_id = self._implicit.get(pid) or self._implicit.setdefault(pid, uuid.uuid4().hex)
            if self._session_known(session_id):
                return session_id, ()
            name = f"process {pid}@{_HOST}"
            return session_id, (_session_row(session_id, name, {"argv": sys.argv}, implicit=True),)
        session_id = str(session_id)
        if self._session_known(session_id):
            return session_id, ()
        # Opened by a pipeline this recorder is not part of: record it, nameless.
        return session_id, (_session_row(session_id, "(unnamed)", {}, implicit=False),)

    # -- recording -----------------------------------------------------------------
    def record(self, response: RawResponse, context: PipelineContext | None = None) -> str:
        """Record one response (any status) in the current session; return its request id."""
        return self.record_many([response], context)[0]

    def record_many(
        self, responses: Iterable[RawResponse], context: PipelineContext | None = None
    ) -> list[str]:
        """Record several responses in one transaction; return their request ids."""
        session_id, statements = self._session_for_write()
        records = tuple(self._identify(response, context, session_id) for response in responses)
        sessions = (session_id,) if statements else ()
        self._submit(_Write(statements, records, sessions))
        return [record.request_id for record in records]

    def _identify(self, response: RawResponse, context: PipelineContext | None, session_id: str) -> _Recorded:
        """The request a response answers and the sha256 of its bytes: all a caller waits for."""
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
        sha256 = hashlib.sha256(response.payload).hexdigest()
        body_sha256 = hashlib.sha256(body).hexdigest() if body is not None else None
        return _Recorded(
            response,
            request_id,
            source,
            method,
            target,
            params,
            headers,
            body,
            body_sha256,
            sha256,
            session_id,
            time.time(),
        )

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
        writer = self._writer_here()
        if writer is not None and request_id in writer.pending_requests:
            writer.flush()
        rows = self._select(_REPLAY, (request_id,))
        if not rows or not 200 <= rows[0][3] <= 299:
            why = f"only error answers (last: {rows[0][3]})" if rows else "never"
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
        self.flush()
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
