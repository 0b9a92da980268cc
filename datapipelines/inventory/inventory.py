"""Inventory: which ranges of a source table each job took, and what became of them."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import ColumnElement

from ..database import database_url, naive_utc, show_url, utc_now
from ..errors import ConfigurationError
from . import upstream
from .job_batch import Batch, BatchRecord, BatchReleasedError
from .source_table import BoundSource, Source, Where, as_source, describe
from .storage import (
    DEFAULT_TABLE,
    FAILED,
    READ_ONLY,
    RUNNING,
    SUCCEEDED,
    check_backend,
    create_engine,
    create_table,
    inventory_table,
    lock,
    table_exists,
)

URL_ENVIRONMENT = "DATAPIPELINES_INVENTORY_URL"
DEFAULT_URL = "sqlite:///datapipelines-inventory.sqlite3"


def default_url() -> str:
    """``$DATAPIPELINES_INVENTORY_URL``, else a SQLite file in the working directory."""
    return os.environ.get(URL_ENVIRONMENT) or DEFAULT_URL


def _seconds(value: float | timedelta, name: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds <= 0:
        raise ConfigurationError(f"{name} must be positive, got {value!r}")
    return seconds


def _positive(value: Any, name: str) -> None:
    if value is not None and not value > 0:
        raise ConfigurationError(f"{name} must be positive or None, got {value!r}")


@dataclass(frozen=True)
class JobSummary:
    """What one job did with one source table."""

    job: str
    source_table: str
    batches: int
    running: int
    succeeded: int
    failed: int
    exhausted: int  # failed with no attempt left
    expired: int  # running past their lease
    last_id: int | None  # end of the last incremental range
    items: int  # items in succeeded ranges
    weight: float  # weight of succeeded ranges, always a float
    max_attempt: int


@dataclass(frozen=True)
class _Plan:
    """One acquisition's settings, resolved."""

    job: str
    source: BoundSource
    where: ColumnElement[Any] | None
    weight: Any
    count: int | None
    id_min: int | None
    id_max: int | None
    job_identifier: str
    config: dict[str, Any]

    @property
    def backfill(self) -> bool:
        return self.id_min is not None or self.id_max is not None


def _gaps(taken: Iterable[tuple[int, int]], low: int | None, high: int | None) -> Iterator[tuple[Any, Any]]:
    """The id intervals in ``low..high`` (None: open) not covered by the sorted ``taken`` ranges."""
    cursor = low
    for start, end in taken:
        if cursor is None or start > cursor:
            yield cursor, start - 1
        cursor = end + 1 if cursor is None else max(cursor, end + 1)
        if high is not None and cursor > high:
            return
    yield cursor, high


class Inventory:
    """Hands out contiguous, weight-bounded ranges of a source table to jobs, and records them.

    ``url`` is a SQLAlchemy URL of the database holding the inventory table
    (SQLite or PostgreSQL; ``postgresql://`` uses psycopg 3). ``source`` is the
    default source table of every job, ``sources`` per-job ones (a name or a
    :class:`Source`). A failed or abandoned range is offered again until it was
    tried ``max_attempts`` times; a range still running after ``lease`` (seconds
    or timedelta) is presumed abandoned. ``clock`` returns the current time.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        source: Source | str | None = None,
        sources: Mapping[str, Source | str] | None = None,
        table: str = DEFAULT_TABLE,
        schema: str | None = None,
        max_attempts: int = 3,
        lease: float | timedelta = timedelta(hours=1),
        clock: Callable[[], datetime] = utc_now,
        job_identifier: str | None = None,
    ) -> None:
        if not isinstance(max_attempts, int) or max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be an int of at least 1, got {max_attempts!r}")
        self.url = database_url(url or default_url())
        self.table = inventory_table(table, schema)
        self.max_attempts = max_attempts
        self.lease = timedelta(seconds=_seconds(lease, "lease"))
        self.job_identifier = job_identifier
        self._clock = clock
        self._engine = create_engine(self.url, immediate=True)
        check_backend(self._engine)
        self._source = None if source is None else as_source(source)
        self._sources = {job: as_source(value) for job, value in (sources or {}).items()}
        self._source_engines: dict[str, sa.Engine] = {}
        self._reflected: dict[tuple[str | None, str | None, str], sa.Table] = {}
        self._created = False

    def __repr__(self) -> str:
        return f"Inventory({show_url(self.url)!r}, table={self.table.fullname!r})"

    def __enter__(self) -> Inventory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection this inventory opened."""
        for engine in (self._engine, *self._source_engines.values()):
            engine.dispose()

    # -- configuration -------------------------------------------------------
    def set_source(self, job: str, source: Source | str) -> None:
        """Make ``source`` the table ``job`` takes its items from."""
        self._sources[job] = as_source(source)

    def source_for(self, job: str) -> Source:
        found = self._sources.get(job, self._source)
        if found is None:
            raise ConfigurationError(
                f"No source table for job {job!r}: pass source= to Inventory(), "
                f"or call set_source({job!r}, ...), or acquire with source="
            )
        return found

    def finished_batches(self, job: str, *, weight_column: str = "count") -> Source:
        """This inventory table as a source of ``job``'s succeeded ranges, for a second stage.

        A range of ``job`` that may still succeed (running, or failed with
        attempts left) is pending: the second stage stops before it.
        """

        def pending(table: sa.Table) -> ColumnElement[Any]:
            may_succeed = sa.or_(
                table.c.status == RUNNING,
                sa.and_(table.c.status == FAILED, table.c.attempt < table.c.max_attempts),
            )
            return sa.and_(table.c.job == job, may_succeed)

        return Source(
            self.table.name,
            id_column="id",
            weight_column=weight_column,
            url=self.url.render_as_string(hide_password=False),
            schema=self.table.schema,
            where={"job": job, "status": SUCCEEDED},
            pending=pending,
        )

    def exists(self) -> bool:
        """Whether the inventory table exists yet (it is created on first use)."""
        return self._created or table_exists(self._engine, self.table)

    # -- acquiring -------------------------------------------------------------
    def acquire_batch(
        self,
        job: str,
        *,
        weight: Any = None,
        count: int | None = None,
        id_min: int | None = None,
        id_max: int | None = None,
        where: Where | None = None,
        source: Source | str | None = None,
        job_identifier: str | None = None,
    ) -> Batch | None:
        """The next range for ``job``, or None when nothing is left.

        A failed or abandoned range of the same kind comes first, as it was.
        Otherwise: the items after the job's last range (or, when ``id_min`` or
        ``id_max`` is given, a backfill: the first items in that window not in one
        of the job's backfill ranges) whose summed ``weight`` and number stay
        within the budgets; an item heavier than ``weight`` comes alone.
        """
        batches = self.acquire_batches(
            job, 1, weight=weight, count=count, id_min=id_min, id_max=id_max,
            where=where, source=source, job_identifier=job_identifier,
        )  # fmt: skip
        return batches[0] if batches else None

    def acquire_batches(
        self,
        job: str,
        n: int,
        *,
        weight: Any = None,
        count: int | None = None,
        id_min: int | None = None,
        id_max: int | None = None,
        where: Where | None = None,
        source: Source | str | None = None,
        job_identifier: str | None = None,
    ) -> list[Batch]:
        """Up to ``n`` consecutive batches, taken in one transaction (fewer when fewer are left)."""
        if not isinstance(n, int) or n < 1:
            raise ConfigurationError(f"n must be an int of at least 1, got {n!r}")
        _positive(weight, "weight")
        _positive(count, "count")
        if id_min is not None and id_max is not None and id_min > id_max:
            raise ConfigurationError(f"id_min {id_min!r} is above id_max {id_max!r}")
        plan = self._plan(job, weight, count, id_min, id_max, where, source, job_identifier)
        records = []
        with self._engine.begin() as connection:
            lock(connection, self.table, job)
            for _ in range(n):
                record = self._take(connection, plan)
                if record is None:
                    break
                records.append(record)
        return [Batch(self, record, plan.source, plan.where) for record in records]

    def _plan(
        self,
        job: str,
        weight: Any,
        count: int | None,
        id_min: int | None,
        id_max: int | None,
        where: Where | None,
        source: Source | str | None,
        job_identifier: str | None,
    ) -> _Plan:
        chosen = self.source_for(job) if source is None else as_source(source)
        bound = self._bind(chosen)
        clause = bound.filter(where)
        config = {
            "source": {
                "table": chosen.table,
                "schema": chosen.schema,
                "id_column": chosen.id_column,
                "weight_column": chosen.weight_column,
                "url": None if chosen.url is None else show_url(database_url(chosen.url)),
            },
            "where": describe(clause, self._engine.dialect if bound.engine is None else bound.engine.dialect),
            "weight": weight,
            "count": count,
            "id_min": id_min,
            "id_max": id_max,
            "lease_seconds": self.lease.total_seconds(),
        }
        return _Plan(
            job, bound, clause, weight, count, id_min, id_max,
            job_identifier or self.job_identifier or f"{socket.gethostname()}:{os.getpid()}", config,
        )  # fmt: skip

    def _bind(self, source: Source) -> BoundSource:
        self._ensure()
        url = None if source.url is None else database_url(source.url)
        if url is not None and url == self.url:
            url = None  # the inventory's own database: read it in the acquiring transaction
        engine = None if url is None else self._source_engine(url)
        key = (None if url is None else str(url), source.schema, source.table)
        table = self._reflected.get(key)
        if table is None:
            if url is None and (source.schema, source.table) == (self.table.schema, self.table.name):
                table = self.table
            else:
                table = self._reflect(engine or self._engine, source)
            self._reflected[key] = table
        return BoundSource(source, table, engine)

    def _source_engine(self, url: sa.URL) -> sa.Engine:
        key = url.render_as_string(hide_password=False)
        engine = self._source_engines.get(key)
        if engine is None:
            engine = self._source_engines[key] = create_engine(url, immediate=False)
        return engine

    def _reflect(self, engine: sa.Engine, source: Source) -> sa.Table:
        with engine.connect() as connection:
            connection.execution_options(**{READ_ONLY: True})
            try:
                return sa.Table(source.table, sa.MetaData(), schema=source.schema, autoload_with=connection)
            except sa.exc.NoSuchTableError:
                raise ConfigurationError(
                    f"Source table {source.label!r} does not exist in {show_url(engine.url)}"
                ) from None

    def _ensure(self) -> None:
        if not self._created:
            create_table(self._engine, self.table)
            self._created = True

    def _append_log(self, text: str) -> ColumnElement[Any]:
        return sa.func.coalesce(self.table.c.log, "") + text

    def _job_rows(self, plan: _Plan) -> list[ColumnElement[Any]]:
        t = self.table
        return [t.c.job == plan.job, t.c.source_table == plan.source.source.label]

    def _take(self, connection: Connection, plan: _Plan) -> BatchRecord | None:
        """Under the job's lock: retake an abandoned or failed range, else record a new one."""
        t = self.table
        now = self.now()
        retaken = self._retake(connection, plan, now)
        if retaken is not None:
            return retaken
        pick = self._pick(connection, plan)
        if pick is None:
            return None
        inserted = connection.execute(
            sa.insert(t)
            .values(
                source_table=plan.source.source.label,
                job=plan.job,
                job_identifier=plan.job_identifier,
                processing_start=now,
                lease_until=now + self.lease,
                id_start=pick.first,
                id_end=pick.last,
                weight=pick.weight,
                count=pick.count,
                attempt=1,
                max_attempts=self.max_attempts,
                backfill=plan.backfill,
                status=RUNNING,
                config=plan.config,
            )
            .returning(*t.c)
        )
        return BatchRecord.from_row(inserted.mappings().one())

    def _retake(self, connection: Connection, plan: _Plan, now: datetime) -> BatchRecord | None:
        """The job's first failed range with attempts left, or abandoned one (running past its
        lease), of the plan's kind, as a new attempt; an abandoned range without attempts left fails."""
        t = self.table
        again = [
            *self._job_rows(plan),
            t.c.backfill == plan.backfill,
            sa.or_(
                sa.and_(t.c.status == FAILED, t.c.attempt < t.c.max_attempts),
                sa.and_(t.c.status == RUNNING, t.c.lease_until < now),
            ),
        ]
        if plan.id_min is not None:
            again.append(t.c.id_end >= plan.id_min)
        if plan.id_max is not None:
            again.append(t.c.id_start <= plan.id_max)
        candidates = sa.select(t.c.id, t.c.status, t.c.attempt, t.c.max_attempts, t.c.job_identifier)
        while found := connection.execute(candidates.where(*again).order_by(t.c.id_start).limit(1)).first():
            values: dict[str, Any] = {}
            if found.status == RUNNING:
                holder = f"attempt {found.attempt} ({found.job_identifier})"
                if found.attempt >= found.max_attempts:
                    note = f"{holder}: lease expired before {now.isoformat()} UTC; no attempts left\n"
                    connection.execute(
                        sa.update(t)
                        .where(t.c.id == found.id)
                        .values(status=FAILED, processing_end=now, log=self._append_log(note))
                    )
                    continue
                values["log"] = self._append_log(f"{holder}: lease expired before {now.isoformat()} UTC\n")
            retaken = connection.execute(
                sa.update(t)
                .where(t.c.id == found.id)
                .values(
                    status=RUNNING,
                    attempt=found.attempt + 1,
                    job_identifier=plan.job_identifier,
                    processing_start=now,
                    processing_end=None,
                    lease_until=now + self.lease,
                    result=None,
                    **values,
                )
                .returning(*t.c)
            )
            return BatchRecord.from_row(retaken.mappings().one())
        return None

    def _pick(self, connection: Connection, plan: _Plan) -> Any:
        t = self.table
        mine = self._job_rows(plan)
        budget = {"where": plan.where, "weight": plan.weight, "count": plan.count}
        if not plan.backfill:
            last = connection.execute(sa.select(sa.func.max(t.c.id_end)).where(*mine, ~t.c.backfill)).scalar()
            return plan.source.pick(connection, first=None if last is None else last + 1, last=None, **budget)
        window = [*mine, t.c.backfill]
        if plan.id_min is not None:
            window.append(t.c.id_end >= plan.id_min)
        if plan.id_max is not None:
            window.append(t.c.id_start <= plan.id_max)
        taken = connection.execute(sa.select(t.c.id_start, t.c.id_end).where(*window).order_by(t.c.id_start))
        for low, high in _gaps(taken.all(), plan.id_min, plan.id_max):
            pick = plan.source.pick(connection, first=low, last=high, **budget)
            if pick is not None:
                return pick
        return None

    # -- releasing (called by Batch) -----------------------------------------------
    def _items(
        self, source: BoundSource, first: int, last: int, where: ColumnElement[Any] | None
    ) -> list[dict]:
        with self._reading() as connection:
            return source.items(connection, first, last, where)

    def _release(self, batch: Batch, status: str, *, result: Any, log: str | None) -> None:
        now = self.now()
        values: dict[str, Any] = {"status": status, "processing_end": now, "result": result}
        if log is not None:
            holder = f"attempt {batch.attempt} ({batch.record.job_identifier})"
            values["log"] = self._append_log(f"{holder} {status} at {now.isoformat()} UTC:\n{log.rstrip()}\n")
        self._update_running(batch, values)

    def _renew(self, batch: Batch, lease: float | timedelta | None) -> None:
        extra = self.lease if lease is None else timedelta(seconds=_seconds(lease, "lease"))
        self._update_running(batch, {"lease_until": self.now() + extra})

    def _update_running(self, batch: Batch, values: dict[str, Any]) -> None:
        """Update the batch's row if this attempt still holds it; explain why not otherwise."""
        t = self.table
        with self._engine.begin() as connection:
            updated = connection.execute(
                sa.update(t)
                .where(t.c.id == batch.id, t.c.attempt == batch.attempt, t.c.status == RUNNING)
                .values(**values)
            ).rowcount
            if updated == 1:
                return
            now = connection.execute(
                sa.select(t.c.status, t.c.attempt, t.c.job_identifier).where(t.c.id == batch.id)
            ).one_or_none()
        if now is None:
            raise BatchReleasedError(f"{batch!r}: its row {batch.id} is gone from {self.table.fullname}")
        if now.attempt != batch.attempt:
            raise BatchReleasedError(
                f"{batch!r} was taken over as attempt {now.attempt} by {now.job_identifier} after its lease "
                f"expired; this attempt's outcome is not recorded"
            )
        raise BatchReleasedError(f"{batch!r} was already released as {now.status}")

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        with self._engine.connect() as connection:
            connection.execution_options(**{READ_ONLY: True})
            yield connection

    # -- reporting -------------------------------------------------------------
    def jobs(self) -> list[JobSummary]:
        """One summary per job and source table, by job name."""
        self._ensure()
        t = self.table
        now = self.now()

        def number(condition: ColumnElement[Any], value: Any = 1) -> Any:
            return sa.func.coalesce(sa.func.sum(sa.case((condition, value), else_=0)), 0)

        query = (
            sa.select(
                t.c.job,
                t.c.source_table,
                sa.func.count(),
                number(t.c.status == RUNNING),
                number(t.c.status == SUCCEEDED),
                number(t.c.status == FAILED),
                number(sa.and_(t.c.status == FAILED, t.c.attempt >= t.c.max_attempts)),
                number(sa.and_(t.c.status == RUNNING, t.c.lease_until < now)),
                sa.func.max(sa.case((~t.c.backfill, t.c.id_end))),
                number(t.c.status == SUCCEEDED, t.c["count"]),
                number(t.c.status == SUCCEEDED, sa.func.coalesce(t.c.weight, 0)),
                sa.func.max(t.c.attempt),
            )
            .group_by(t.c.job, t.c.source_table)
            .order_by(t.c.job, t.c.source_table)
        )
        with self._reading() as connection:
            rows = [list(row) for row in connection.execute(query)]
        for row in rows:
            row[10] = float(row[10])  # a SUM of floats is an int on SQLite when every weight is whole
        return [JobSummary(*row) for row in rows]

    def batches(
        self, job: str | None = None, *, status: str | None = None, limit: int | None = None
    ) -> list[BatchRecord]:
        """The inventory's rows in id order; with ``limit``, the newest ``limit`` of them."""
        self._ensure()
        t = self.table
        query = sa.select(t).order_by(t.c.id.desc())
        if job is not None:
            query = query.where(t.c.job == job)
        if status is not None:
            query = query.where(t.c.status == status)
        if limit is not None:
            query = query.limit(limit)
        with self._reading() as connection:
            rows = [BatchRecord.from_row(row) for row in connection.execute(query).mappings()]
        return rows[::-1]

    def retry(self, job: str | None = None, *, ids: Iterable[int] | None = None) -> int:
        """Give each failed range that has used up its attempts (of ``job``, or with row ``ids``)
        one more; the next acquisition of its job offers it again. Returns how many."""
        self._ensure()
        t = self.table
        query = sa.update(t).where(t.c.status == FAILED, t.c.attempt >= t.c.max_attempts)
        if job is not None:
            query = query.where(t.c.job == job)
        if ids is not None:
            query = query.where(t.c.id.in_(list(ids)))
        with self._engine.begin() as connection:
            return int(connection.execute(query.values(max_attempts=t.c.attempt + 1)).rowcount)

    def import_pybatchintory(
        self,
        url: str | None = None,
        *,
        table: str = "inventory",
        schema: str | None = None,
        sources: Mapping[str, Source | str] | None = None,
    ) -> int:
        """Copy a pybatchintory inventory's ranges into this one (see ``upstream``); how many were new."""
        return upstream.import_pybatchintory(self, url, table=table, schema=schema, sources=sources)

    def now(self) -> datetime:
        """The inventory clock's current time as naive UTC, as the table stores times."""
        return naive_utc(self._clock())
