"""Carry a pybatchintory inventory over: its ranges become rows of ours, so jobs continue.

pybatchintory's table (``inventory`` by default) names its columns otherwise,
in two generations: ``meta_table``, ``job_result_item`` (``job_result``),
``batch_id_start`` / ``batch_id_end`` (``meta_id_start`` / ``meta_id_end``),
``batch_weight`` / ``batch_count`` (``weight`` / ``count``), ``logging``.
Every range is imported as an incremental range, as pybatchintory counts a
job's progress from all of its ranges. Importing twice imports nothing new.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any, Protocol

import sqlalchemy as sa

from ..database import database_url, show_url
from ..errors import ConfigurationError
from .source_table import Source, as_source
from .storage import STATUSES, create_engine

# Our column: pybatchintory's names for it, newest first.
COLUMNS = {
    "source_table": ("meta_table",),
    "result": ("job_result_item", "job_result"),
    "id_start": ("batch_id_start", "meta_id_start"),
    "id_end": ("batch_id_end", "meta_id_end"),
    "weight": ("batch_weight", "weight"),
    "count": ("batch_count", "count"),
    "log": ("logging",),
    "job": ("job",),
    "job_identifier": ("job_identifier",),
    "processing_start": ("processing_start",),
    "processing_end": ("processing_end",),
    "attempt": ("attempt",),
    "status": ("status",),
    "config": ("config",),
}
_REQUIRED = ("source_table", "id_start", "id_end", "job", "status", "processing_start")
IMPORTED_FROM = "imported_from"


class ImportTarget(Protocol):
    """The inventory the ranges are carried into."""

    url: sa.URL
    table: sa.Table
    lease: timedelta
    max_attempts: int
    _engine: sa.Engine

    def _ensure(self) -> None: ...


def import_pybatchintory(
    inventory: ImportTarget,
    url: str | None = None,
    *,
    table: str = "inventory",
    schema: str | None = None,
    sources: Mapping[str, Source | str] | None = None,
) -> int:
    """Copy the ranges of pybatchintory's ``table`` (at ``url``, default the inventory's
    database) into ``inventory``, in one transaction; returns how many were new.

    pybatchintory names a source by its table alone; ``sources`` maps such a
    name to the :class:`Source` (or label) jobs use here, e.g. one in a schema.
    """
    labels = {name: as_source(source).label for name, source in (sources or {}).items()}
    source_url = inventory.url if url is None else database_url(url)
    engine = inventory._engine if url is None else create_engine(source_url, immediate=False)
    try:
        with engine.connect() as connection:
            try:
                upstream = sa.Table(table, sa.MetaData(), schema=schema, autoload_with=connection)
            except sa.exc.NoSuchTableError:
                where = show_url(source_url)
                raise ConfigurationError(f"No pybatchintory table {table!r} in {where}") from None
            names = _mapping(upstream, show_url(source_url))
            rows = connection.execute(sa.select(upstream).order_by(upstream.c.id)).mappings().all()
    finally:
        if url is not None:
            engine.dispose()
    origin = f"pybatchintory:{upstream.fullname}@{show_url(source_url)}"
    inventory._ensure()
    ours = inventory.table
    with inventory._engine.begin() as connection:
        done = {
            (config or {}).get(IMPORTED_FROM)
            for config in connection.execute(sa.select(ours.c.config)).scalars()
            if isinstance(config, dict)
        }
        new = [
            _row(inventory, row, names, labels, f"{origin} row {row['id']}")
            for row in rows
            if f"{origin} row {row['id']}" not in done
        ]
        if new:
            connection.execute(sa.insert(ours), new)
    return len(new)


def _mapping(upstream: sa.Table, where: str) -> dict[str, str | None]:
    """Our column names to the upstream table's, refusing a table that is not pybatchintory's."""
    names: dict[str, str | None] = {}
    for ours, candidates in COLUMNS.items():
        names[ours] = next((name for name in candidates if name in upstream.c), None)
    missing = [ours for ours in _REQUIRED if names[ours] is None]
    if missing or "id" not in upstream.c:
        wanted = ", ".join(COLUMNS[name][0] for name in missing) or "id"
        raise ConfigurationError(
            f"Table {upstream.fullname!r} in {where} is not a pybatchintory inventory: it lacks {wanted}"
        )
    return names


def _row(
    inventory: ImportTarget, row: Any, names: dict[str, str | None], labels: Mapping[str, str], origin: str
) -> dict[str, Any]:
    def value(ours: str, default: Any = None) -> Any:
        name = names[ours]
        found = None if name is None else row[name]
        return default if found is None else found

    status = str(value("status"))
    if status not in STATUSES:
        expected = ", ".join(STATUSES)
        raise ConfigurationError(f"{origin}: unknown status {status!r} (expected one of {expected})")
    attempt = int(value("attempt", 1))
    started = value("processing_start")
    weight = value("weight")
    config = value("config", {})
    return {
        "source_table": labels.get(value("source_table"), value("source_table")),
        "job": value("job"),
        "job_identifier": value("job_identifier"),
        "result": value("result"),
        "processing_start": started,
        "processing_end": value("processing_end"),
        # A range still running when moved over is taken over once this lease runs out.
        "lease_until": started + inventory.lease,
        "id_start": int(value("id_start")),
        "id_end": int(value("id_end")),
        "weight": None if weight is None else float(weight),
        "count": int(value("count", int(value("id_end")) - int(value("id_start")) + 1)),
        "attempt": attempt,
        "max_attempts": max(attempt, inventory.max_attempts),
        "backfill": False,
        "status": status,
        "log": value("log"),
        "config": {**(config if isinstance(config, dict) else {"upstream": config}), IMPORTED_FROM: origin},
    }
