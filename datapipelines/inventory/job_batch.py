"""A job's batch: one contiguous range of source items taken by one job, until it is released."""

from __future__ import annotations

import json
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import DataPipelinesError
from .storage import FAILED, RUNNING, SUCCEEDED

if TYPE_CHECKING:
    from sqlalchemy.sql.elements import ColumnElement

    from .source_table import BoundSource


class BatchReleasedError(DataPipelinesError, ValueError):
    """A batch was released twice, or after another process took it over.

    A ``ValueError``, as pybatchintory raises for a batch released twice.
    """


class BatchResultError(DataPipelinesError, TypeError):
    """A batch's result cannot be stored as JSON."""


@dataclass(frozen=True)
class BatchRecord:
    """One row of the inventory table, as ``Inventory.batches()`` lists it."""

    id: int
    source_table: str
    job: str
    job_identifier: str | None
    result: Any
    processing_start: datetime
    processing_end: datetime | None
    lease_until: datetime
    id_start: int
    id_end: int
    weight: float | None
    count: int
    attempt: int
    max_attempts: int
    backfill: bool
    status: str
    log: str | None
    config: Any

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> BatchRecord:
        values = {f.name: row[f.name] for f in fields(cls)}
        # SQLite hands back an inserted whole weight as int, a stored one as float: always float.
        if values["weight"] is not None:
            values["weight"] = float(values["weight"])
        return cls(**values)

    @property
    def id_range(self) -> tuple[int, int]:
        return (self.id_start, self.id_end)

    def expired(self, now: datetime) -> bool:
        """Still running past its lease (``now`` naive UTC): its process is presumed dead."""
        return self.status == RUNNING and self.lease_until < now


class BatchOwner(Protocol):
    """The inventory that handed a batch out, as the batch reports back to it."""

    def _items(
        self, source: BoundSource, first: int, last: int, where: ColumnElement[Any] | None
    ) -> list[dict]: ...

    def _renew(self, batch: Batch, lease: float | timedelta | None) -> None: ...

    def _release(self, batch: Batch, status: str, *, result: Any, log: str | None) -> None: ...


class Batch:
    """A range of items a job holds until it calls :meth:`succeeded` or :meth:`failed`.

    ``items`` are the source rows (dicts) of the range that pass the job's filter,
    read on first use.
    """

    def __init__(
        self,
        inventory: BatchOwner,
        record: BatchRecord,
        source: BoundSource,
        where: ColumnElement[Any] | None,
    ) -> None:
        self.record = record
        self._inventory = inventory
        self._source = source
        self._where = where
        self._items: list[dict] | None = None
        self._released: str | None = None

    def __repr__(self) -> str:
        kind = "backfill" if self.backfill else "batch"
        return (
            f"<{kind} {self.id} of job {self.job!r}: ids {self.id_start}..{self.id_end}, "
            f"count {self.count}, weight {self.weight}, attempt {self.attempt}>"
        )

    id = property(lambda self: self.record.id, doc="The inventory row id.")
    job = property(lambda self: self.record.job)
    id_start = property(lambda self: self.record.id_start)
    id_end = property(lambda self: self.record.id_end)
    id_range = property(lambda self: self.record.id_range, doc="(first id, last id), both inclusive.")
    count = property(lambda self: self.record.count)
    weight = property(lambda self: self.record.weight)
    attempt = property(lambda self: self.record.attempt)
    backfill = property(lambda self: self.record.backfill)

    @property
    def status(self) -> str:
        return self._released or RUNNING

    @property
    def items(self) -> list[dict]:
        if self._items is None:
            self._items = self._inventory._items(self._source, self.id_start, self.id_end, self._where)
        return self._items

    def succeeded(self, result: Any = None, *, log: str | None = None) -> None:
        """Record the range as done, with a JSON-serialisable ``result`` and, if given, a ``log`` text."""
        try:
            json.dumps(result)
        except (TypeError, ValueError) as error:
            raise BatchResultError(
                f"The result of {self!r} cannot be stored as JSON ({error}); the batch is still running"
            ) from error
        self._release(SUCCEEDED, result=result, log=log)

    def failed(self, error: BaseException | str, *, log: str | None = None) -> None:
        """Record the range as failed; it is offered again until it has had its max attempts.

        The row's log gets ``log`` (if given), then the error's traceback (or the text).
        """
        if isinstance(error, BaseException):
            text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        else:
            text = str(error)
        self._release(FAILED, log=text if log is None else f"{log.rstrip()}\n{text}")

    def process(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``func(items, *args, **kwargs)``, then release the batch with the outcome; errors propagate."""
        try:
            result = func(self.items, *args, **kwargs)
        except Exception as error:
            self.failed(error)
            raise
        self.succeeded(result)
        return result

    def renew(self, lease: Any = None) -> None:
        """Extend the lease from now (by ``lease`` or the inventory's), for work that takes longer."""
        if self._released:
            raise BatchReleasedError(f"{self!r} was already released as {self._released}; too late to renew")
        self._inventory._renew(self, lease)

    def _release(self, status: str, *, result: Any = None, log: str | None = None) -> None:
        if self._released:
            raise BatchReleasedError(f"{self!r} was already released as {self._released}")
        self._inventory._release(self, status, result=result, log=log)
        self._released = status
