"""The catalogue: what a pipeline collected, and what each consumer has done with it.

``Catalog`` is a sink that records one row per item (key, query, size, SHA-256,
source, fields); ``Catalog.generate`` builds it from JSON metadata files;
``LocalState`` keeps one consumer's own state against it. Both sit on SQLite
or PostgreSQL through SQLAlchemy Core.
"""

from ...extras import reraise_naming_extra

try:
    import sqlalchemy  # noqa: F401  (checked first, to name the extra that brings it)
except ImportError as error:
    reraise_naming_extra("Catalog", error)

from ._db import CatalogError
from .content import canonical_json, content_bytes
from .counts import Counts
from .kv import KeyValueStore
from .records import Record
from .sink import Catalog
from .state import DELETED_REASON, LocalState

__all__ = [
    "DELETED_REASON",
    "Catalog",
    "CatalogError",
    "Counts",
    "KeyValueStore",
    "LocalState",
    "Record",
    "canonical_json",
    "content_bytes",
]
