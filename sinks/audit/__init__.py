"""The audit recorder, installed as ``datapipelines.sinks.audit``: see :mod:`.recorder`."""

from .recorder import (
    BATCH_LIMIT,
    BLOBS,
    DATABASE,
    FRESH_BLOB_SECONDS,
    LOGGER,
    SCHEMA_VERSION,
    AuditRecorder,
    AuditWriteError,
    BlobStore,
    DamagedBlobError,
)

__all__ = [
    "BATCH_LIMIT",
    "BLOBS",
    "DATABASE",
    "FRESH_BLOB_SECONDS",
    "LOGGER",
    "SCHEMA_VERSION",
    "AuditRecorder",
    "AuditWriteError",
    "BlobStore",
    "DamagedBlobError",
]
