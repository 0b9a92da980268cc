"""Batch inventory: incremental and backfill processing with predictable workloads.

A job takes contiguous ranges of a SQL table with an auto-increment id, each
bounded by summed weight and item count, and releases each range as succeeded
or failed. The inventory table records every range, so a job only takes what
it has not taken yet, failed work is offered again, and history can be re-run.
"""

from ..extras import reraise_naming_extra

try:
    import sqlalchemy  # noqa: F401  (checked first, to name the extra that brings it)
except ImportError as error:
    reraise_naming_extra("Inventory", error)

from .inventory import DEFAULT_URL, URL_ENVIRONMENT, Inventory, JobSummary
from .job_batch import Batch, BatchRecord, BatchReleasedError, BatchResultError
from .settings import Settings, configure, load_settings
from .source_table import Source, Where
from .storage import DEFAULT_TABLE, FAILED, RUNNING, STATUSES, SUCCEEDED

__all__ = [
    "DEFAULT_TABLE",
    "DEFAULT_URL",
    "FAILED",
    "RUNNING",
    "STATUSES",
    "SUCCEEDED",
    "URL_ENVIRONMENT",
    "Batch",
    "BatchRecord",
    "BatchReleasedError",
    "BatchResultError",
    "Inventory",
    "JobSummary",
    "Source",
    "Settings",
    "Where",
    "configure",
    "load_settings",
]
