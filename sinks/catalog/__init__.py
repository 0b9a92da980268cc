"""The catalogue: what a pipeline collected, and what each consumer has done with it.

``Catalog`` is a sink that records one row per item (key, query, size, SHA-256,
source, fields) and logs what changed (``changes``, ``squash``);
``Catalog.generate`` builds it from JSON metadata files (or the files
themselves) and soft-deletes records whose files vanished; ``LocalState``
keeps one consumer's own state against it. Both sit on SQLite or PostgreSQL
through SQLAlchemy Core.
"""

from ...extras import reraise_naming_extra

try:
    import sqlalchemy  # noqa: F401  (checked first, to name the extra that brings it)
except ImportError as error:
    reraise_naming_extra("Catalog", error)

from ._db import CatalogError
from .changes import Change
from .content import canonical_json, content_bytes
from .counts import Counts
from .files import FILE_FIELDS, META_MISSING, ORIGINAL_MISSING
from .kv import KeyValueStore
from .records import Record
from .remote import Remote
from .sink import Catalog
from .state import DELETED_REASON, LocalState

__all__ = [
    "DELETED_REASON",
    "FILE_FIELDS",
    "META_MISSING",
    "ORIGINAL_MISSING",
    "Catalog",
    "CatalogError",
    "Change",
    "Counts",
    "KeyValueStore",
    "LocalState",
    "Record",
    "Remote",
    "canonical_json",
    "content_bytes",
]
