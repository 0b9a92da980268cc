"""What the catalogue and the inventory share about SQL databases: URLs, engines, errors, time.

Both sit on SQLAlchemy Core over SQLite or PostgreSQL; plain ``postgresql://`` and
``postgres://`` URLs use psycopg 3.
Every engine made here turns the driver's errors (an unreachable server, a
file that is not a database, a truncated one) into :class:`DatabaseError`
naming the URL with its password hidden, so a caller, and the command line,
see one clear line instead of a driver traceback. Importing this module loads
SQLAlchemy: only the parts that need a database import it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Engine

from .errors import ConfigurationError, DatabaseError

UTC = timezone.utc
CONNECT_TIMEOUT = 10  # seconds to reach a PostgreSQL server, unless the URL says connect_timeout=


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC: the default clock of the catalogue and the inventory."""
    return datetime.now(UTC)


def naive_utc(moment: datetime) -> datetime:
    """``moment`` as naive UTC, the form both store; a naive input is taken to be UTC already."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def database_url(url: str | URL, error: type[Exception] = ConfigurationError) -> URL:
    """``url`` parsed; plain PostgreSQL URLs get psycopg 3.

    A string SQLAlchemy cannot parse raises ``error`` naming it.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError as problem:
        raise error(f"Not a database URL: {url!r} ({problem})") from problem
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def show_url(url: URL) -> str:
    """``url`` as text with its password hidden."""
    return url.render_as_string(hide_password=True)


def sqlite_file(url: URL) -> Path | None:
    """The file a SQLite URL names; None for another backend or an in-memory database."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def create_engine(url: URL, what: str, error: type[Exception] = ConfigurationError, **options: Any) -> Engine:
    """An engine whose database errors are :class:`DatabaseError` naming ``what`` and the URL.

    A scheme SQLAlchemy has no dialect or driver for raises ``error`` naming the
    URL. PostgreSQL connections give up after ``CONNECT_TIMEOUT`` seconds.
    """
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        # A server that drops packets would otherwise hold the first query for minutes.
        options["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT, **options.get("connect_args", {})}
    try:
        engine = sa.create_engine(url, **options)
    except (sa.exc.NoSuchModuleError, ImportError) as problem:
        # The driver this project installs for PostgreSQL is an extra: say which.
        hint = '; pip install "datapipelines[postgres]"' if url.drivername == "postgresql+psycopg" else ""
        raise error(
            f"The {what} {show_url(url)!r} has a scheme no installed database driver serves "
            f"({url.drivername}://): {problem}{hint}"
        ) from problem
    label = f"{what} {show_url(url)}"

    @event.listens_for(engine, "handle_error")
    def _name_the_database(context: Any) -> Exception | None:
        original = context.original_exception
        if isinstance(original, DatabaseError):
            return None
        text = str(original).strip()
        return DatabaseError(f"{label}: {text.splitlines()[0] if text else type(original).__name__}")

    return engine
