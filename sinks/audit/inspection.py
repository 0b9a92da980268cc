"""Reading back a recorder (sessions, summaries, request histories) and maintaining it: verify, gc, export."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datapipelines.errors import ConfigurationError, NotFoundError

from .blobs import BlobStore
from .schema import DATABASE, INSERT_REQUEST, INSERT_RESPONSE, AuditStoreError


class Inspection:
    """Reports and maintenance over a recorder's database and blobs; mixed into AuditRecorder."""

    # Provided by AuditRecorder.
    directory: Path
    blobs: BlobStore
    if TYPE_CHECKING:

        def __init__(self, directory: str | os.PathLike[str]) -> None: ...

        @property
        def path(self) -> Path: ...

        def flush(self) -> None: ...

        def close(self) -> None: ...

        def _read(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]: ...

        def _transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...

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
        damaged = self._damaged_by_session()
        for session in sessions:
            session["meta"] = self._decoded(session["meta"], f"the meta of session {session['id']!r}")
            session["implicit"] = bool(session["implicit"])
            session["damaged"] = damaged.get(session["id"], 0)
        return sessions

    def _damaged_by_session(self) -> dict[str, int]:
        """Per session, its responses whose blob replay found damaged and nothing has repaired since."""
        found = {row[0] for row in self._read("SELECT DISTINCT sha256 FROM damaged")}
        broken = sorted(sha256 for sha256 in found if self.blobs.check(sha256) != "ok")
        if not broken:
            return {}
        marks = ", ".join("?" * len(broken))
        counts = f"SELECT session_id, COUNT(*) FROM responses WHERE sha256 IN ({marks}) GROUP BY session_id"
        rows = self._read(counts, broken)
        return {session_id: count for session_id, count in rows}

    def _decoded(self, text: Any, what: str) -> Any:
        """A JSON column's value; AuditStoreError naming the file and the row if it is not JSON."""
        try:
            return json.loads(text)
        except (TypeError, ValueError) as error:
            raise AuditStoreError(f"Audit database {self.path}: {what} is not JSON ({error})") from error

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
        ((source, method, target, params, headers, body_sha256, first_seen, *partition),) = self._read(
            "SELECT source, method, target, params, headers, body_sha256, first_seen, as_of_bucket, "
            "cache_tag FROM requests WHERE id = ?",
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
            response["headers"] = self._decoded(
                response["headers"], f"the headers of response {response['id']}"
            )
        return {
            "id": request_id,
            "source": source,
            "method": method,
            "target": target,
            "params": self._decoded(params, f"the params of request {request_id}"),
            "headers": self._decoded(headers, f"the headers of request {request_id}"),
            "body_sha256": body_sha256,
            "first_seen": first_seen,
            "as_of_bucket": partition[0],
            "cache_tag": partition[1],
            "responses": responses,
        }

    def _referenced(self) -> set[str]:
        rows = self._read(
            "SELECT sha256 FROM responses UNION SELECT body_sha256 FROM requests "
            "WHERE body_sha256 IS NOT NULL"
        )
        # A tampered row may hold anything: its repr is reported (as damaged), never opened.
        return {row[0] if isinstance(row[0], str) else repr(row[0]) for row in rows}

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
                if path.name not in referenced and path.lstat().st_mtime <= deadline:
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
        target = type(self)(directory)  # the recorder's own class: this module never imports it
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
            db.executemany(INSERT_REQUEST, requests)
            db.executemany(INSERT_RESPONSE, [row[1:] for row in responses])
        target.close()
        return {
            "session": found["id"],
            "name": found["name"],
            "requests": len(requests),
            "responses": len(responses),
            "directory": str(directory),
        }
