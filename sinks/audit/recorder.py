"""AuditRecorder: records RawResponses as a sink, replays them as a source, in sessions."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from datapipelines.context import PipelineContext, current_session
from datapipelines.data_sink import DataSink
from datapipelines.data_source import DataSource
from datapipelines.errors import ConfigurationError, NotFoundError, type_name
from datapipelines.remote import RawResponse, RemoteQueryError, ResponseRecorder, request_for

from .blobs import BLOBS, BlobStore, DamagedBlobError
from .inspection import Inspection
from .replay import ReplayRule
from .schema import (
    DATABASE,
    END_SESSION,
    HOST,
    INSERT_DAMAGED,
    INSERT_REQUEST,
    INSERT_RESPONSE,
    AuditStoreError,
    Recorded,
    connect,
    create_tables,
    masked_argv,
    partition_pairs,
    session_row,
)
from .writer import AuditWriteError, Write, Writer

# The package's logger: one name configures the whole recorder.
LOGGER = logging.getLogger(__package__)

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


def _check_write_behind(max_pending: int, flush_interval: float, max_delay: float | None) -> None:
    if max_pending < 1 or flush_interval < 0:
        raise ConfigurationError(
            f"AuditRecorder needs max_pending >= 1 and flush_interval >= 0, "
            f"got max_pending={max_pending!r}, flush_interval={flush_interval!r}"
        )
    if max_delay is not None and not flush_interval <= max_delay / 4:
        raise ConfigurationError(
            f"AuditRecorder needs flush_interval <= max_delay / 4 (the writer must start a batch well "
            f"before callers wait for it), got flush_interval={flush_interval!r}, max_delay={max_delay!r}; "
            "raise max_delay, or give max_delay=None for no age bound"
        )


class AuditRecorder(Inspection, DataSource, DataSink, ResponseRecorder):
    """Records RawResponses (a sink) and replays them (a source); see the package docstring.

    ``replay=False`` makes it record only, never answer. Safe to share between
    threads, and between processes that open the same directory.

    ``write_behind=True``: ``put``/``record`` compute the request id and sha256,
    queue the blobs and rows and return; one daemon thread per recorder (and
    process) commits them, many per transaction, at most ``flush_interval``
    seconds after they were queued. At most ``max_pending`` records wait, and a
    record is committed at most ``max_delay`` seconds after ``put`` returned:
    callers block (back-pressure) once the oldest record not yet committed has
    waited ``max_delay / 4``, until the thread catches up. ``max_delay=None``
    drops the age bound. ``flush()`` waits for
    everything queued; ``close_session``, ``close``, every read and a normal
    process exit flush first. A failed background commit is logged and raised by
    the next ``flush``/``put`` (AuditWriteError); its records are kept and retried.

    Replay: ``ttl`` (seconds or a timedelta) is the oldest a recording may be to be
    replayed; ``session`` (an id, unique id prefix or name) and ``as_of`` (a
    datetime, ISO 8601 str or Unix seconds) pin replay to one session's answers or
    to those fetched by then (see :class:`~.replay.ReplayRule`). Through a pipeline,
    the requested type's Policy ttl also applies to a recording's age.
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
        ttl: Any = None,
        as_of: Any = None,
        session: str | None = None,
        max_delay: float | None = 0.5,
    ) -> None:
        _check_write_behind(max_pending, flush_interval, max_delay)
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise AuditStoreError(f"Cannot create the audit directory {self.directory}: {error}") from error
        self.blobs = BlobStore(self.directory / BLOBS)
        self.replay = replay
        self.write_behind = write_behind
        self._max_pending, self._flush_interval = max_pending, flush_interval
        # Callers wait once a record has waited a quarter of the bound: the rest is for committing what
        # waits, with room for a machine slower than the writer's recent pace.
        self._max_age = None if max_delay is None else max_delay / 4
        self._busy_timeout = busy_timeout
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0
        self._writer: Writer | None = None
        self._known_sessions: set[str] = set()
        self._implicit: dict[int, str] = {}
        try:
            with self._transaction() as db:
                create_tables(db)
        except AuditStoreError:
            self.close()
            raise
        self._rule = self._replay_rule(ttl, as_of, session)
        self.damaged = 0  # damaged blobs replay found in this process
        _RECORDERS.add(self)

    def __repr__(self) -> str:
        return f"AuditRecorder({str(self.directory)!r})"

    # -- connection -------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.directory / DATABASE

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, self._busy_timeout)

    def _connection(self) -> sqlite3.Connection:
        # One connection per process: SQLite connections must not cross a fork.
        if self._db is None or self._db_pid != os.getpid():
            self._db, self._db_pid = self._connect(), os.getpid()
            self._known_sessions.clear()
        return self._db

    def _failed(self, error: sqlite3.Error) -> AuditStoreError:
        """The error to raise for a failed database call: SQLite's own messages never name the file."""
        return AuditStoreError(f"Audit database {self.path}: {error}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as error:
                raise self._failed(error) from error

    def _select(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection().execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as error:
                raise self._failed(error) from error

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
                        self._db.execute(END_SESSION, (time.time(), session))
                    self._db.close()
                self._db = None

    def __enter__(self) -> AuditRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------
    def _writer_here(self) -> Writer | None:
        """This process's writer thread, if started (a writer inherited through fork is not)."""
        writer = self._writer
        return writer if writer is not None and writer.pid == os.getpid() else None

    def _submit(self, write: Write) -> None:
        """Commit ``write`` now, or queue it for the writer thread in write-behind mode."""
        if not self.write_behind:
            with self._lock:
                try:
                    self._commit((write,), self._connection())
                except sqlite3.Error as error:
                    raise self._failed(error) from error
            return
        writer = self._writer_here()
        if writer is None:
            with self._lock:
                writer = self._writer_here()
                if writer is None:
                    _hook_process_exit()
                    writer = self._writer = Writer(
                        repr(self),
                        self._connect,
                        self._commit,
                        self._max_pending,
                        self._flush_interval,
                        self._max_age,
                    )
        writer.submit(write)

    def _commit(self, writes: Sequence[Write], db: sqlite3.Connection) -> None:
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
                    db.execute(INSERT_REQUEST, request_row)
                    db.execute(INSERT_RESPONSE, response_row)
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
        row = session_row(session_id, name, meta, implicit=False)
        self._submit(Write((row,), sessions=(session_id,)))

    def close_session(self, session_id: str) -> None:
        self._submit(Write(((END_SESSION, (time.time(), session_id)),)))
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
            name = f"process {pid}@{HOST}"
            meta = {"argv": masked_argv(sys.argv)}
            return session_id, (session_row(session_id, name, meta, implicit=True),)
        session_id = str(session_id)
        if self._session_known(session_id):
            return session_id, ()
        # Opened by a pipeline this recorder is not part of: record it, nameless.
        return session_id, (session_row(session_id, "(unnamed)", {}, implicit=False),)

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
        self._submit(Write(statements, records, sessions))
        return [record.request_id for record in records]

    def _identify(self, response: RawResponse, context: PipelineContext | None, session_id: str) -> Recorded:
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
        partition = response.partition
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
            partition = request.partition
        sha256 = hashlib.sha256(response.payload).hexdigest()
        body_sha256 = hashlib.sha256(body).hexdigest() if body is not None else None
        return Recorded(
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
            partition,
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
        return self.replayed(self._request_id(query), query)

    @get_many.register(RawResponse)
    def _get_many_raw(self, query: Mapping[str, Any], context: PipelineContext | None = None) -> Any:
        raise NotFoundError(f"{self!r} replays one request per query, not many: {query!r}")

    def replayed(self, request_id: str, query: Any = None) -> RawResponse:
        """The newest 2xx response recorded for ``request_id`` (within the pins and ttl), as a RawResponse."""
        return self._replay(request_id, query)[0]

    def lookup_entry(self, type: Any, query: Mapping[str, Any]) -> tuple[RawResponse, float]:
        """``(response, age in seconds)`` replayed for ``query``, so a pipeline applies the type's Policy."""
        if type is not RawResponse or not self.replay:
            raise NotFoundError(f"{self!r} replays RawResponse only, and only with replay=True")
        return self._replay(self._request_id(query), query)

    def _request_id(self, query: Mapping[str, Any]) -> str:
        try:
            return request_for(query).id
        except RemoteQueryError as error:
            raise NotFoundError(f"{self!r}: not a remote query ({error})") from None

    def _replay(self, request_id: str, query: Any) -> tuple[RawResponse, float]:
        """The answer to replay and its age; NotFoundError naming why there is none."""
        writer = self._writer_here()
        if writer is not None and request_id in writer.pending_requests:
            writer.flush()
        rule = self._rule
        rows = self._select(rule.statement, rule.arguments(request_id))
        if not rows or not 200 <= rows[0][3] <= 299:
            why = f"only error answers (last: {rows[0][3]})" if rows else "never"
            pins = f" {rule.describe()}" if rule.pinned else ""
            raise NotFoundError(
                f"Request {request_id[:12]} ({query!r}) was {why} recorded{pins} in {self.directory}"
            )
        age = rule.age(rows[0][9])
        if rule.expired(age):
            raise NotFoundError(
                f"Request {request_id[:12]} ({query!r}) was recorded {age:.0f}s ago, past the ttl of "
                f"{self!r} ({rule.ttl:g}s): not replayed"
            )
        try:
            return self._response(rows[0]), age
        except DamagedBlobError as damaged:
            self._note_damaged(damaged.sha256, rows[0])
            raise

    def _note_damaged(self, sha256: str, row: tuple[Any, ...]) -> None:
        """Write down that replay found ``sha256`` damaged (``audit sessions`` counts it)."""
        self.damaged += 1
        self._submit(Write(((INSERT_DAMAGED, (sha256, row[0], row[1], time.time())),)))

    def _replay_rule(self, ttl: Any, as_of: Any, session: str | None) -> ReplayRule:
        """The rule for ``ttl`` / ``as_of`` / ``session``; a session that is not recorded is an error."""
        if session is None:
            return ReplayRule(ttl=ttl, as_of=as_of)
        try:
            found = self.find_session(session)
        except NotFoundError as error:
            raise ConfigurationError(f"{self!r} cannot pin replay to session {session!r}: {error}") from None
        return ReplayRule(ttl=ttl, as_of=as_of, session_id=found["id"], session_end=found["ended_at"])

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
            as_of_bucket,
            cache_tag,
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
            partition=partition_pairs(as_of_bucket, cache_tag),
        )
