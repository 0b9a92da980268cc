"""The one PostgreSQL probe of the suite: where the test server is, and whether it answers.

The URL comes from env DATAPIPELINES_TEST_POSTGRES; under CI a silent server fails the run
instead of skipping the PostgreSQL cases.
"""

from __future__ import annotations

import functools
import os

import pytest

POSTGRES_URL = os.environ.get(
    "DATAPIPELINES_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@functools.cache
def postgres_answers() -> bool:
    """Whether the server at POSTGRES_URL takes a connection (asked once per run)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 2})
    try:
        with engine.connect():
            return True
    except sqlalchemy.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def require_postgres() -> None:
    """Skip the calling test when no PostgreSQL answers; fail it under CI."""
    if not postgres_answers():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but no PostgreSQL answers at {POSTGRES_URL}")
        pytest.skip(f"no PostgreSQL answers at {POSTGRES_URL}")
