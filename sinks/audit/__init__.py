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
recorded for the query's request id, no older than its ``ttl``, optionally pinned
to one session or to what was fetched by a time (``session=``, ``as_of=``); it tells
the pipeline each answer's age, so the type's Policy applies. Error answers are
recorded (they explain a run) but never replayed. A blob whose bytes no longer match its sha256 is never
served: it is moved aside to ``<sha256>.damaged`` and the request is not found,
so a live pipeline fetches it again and an offline one raises NotFoundError.

By default a record is committed before ``put`` returns. ``write_behind=True``
hands blobs and rows to one background thread per recorder and process, which
commits them in batches shortly after (see :class:`AuditRecorder`).

Modules: ``recorder`` (AuditRecorder: recording, replay, sessions), ``replay``
(which answer replay picks, and its age), ``inspection``
(reports, verify, gc, export), ``writer`` (the write-behind thread), ``schema``
(SQLite tables, statements, connections), ``blobs`` (content-addressed files).
"""

from .blobs import BLOBS, FRESH_BLOB_SECONDS, BlobStore, DamagedBlobError
from .recorder import LOGGER, AuditRecorder
from .schema import DATABASE, SCHEMA_VERSION, AuditStoreError
from .writer import BATCH_LIMIT, AuditWriteError

__all__ = [
    "BATCH_LIMIT",
    "BLOBS",
    "DATABASE",
    "FRESH_BLOB_SECONDS",
    "LOGGER",
    "SCHEMA_VERSION",
    "AuditRecorder",
    "AuditStoreError",
    "AuditWriteError",
    "BlobStore",
    "DamagedBlobError",
]
