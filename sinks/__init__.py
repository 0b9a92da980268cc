"""Built-in tiers, installed as ``datapipelines.sinks``.

Each module holds one store. The tiers on the core dependencies import
eagerly; the SQL-backed ones (``AuditRecorder`` needs only the standard
library, ``Catalog`` and ``LocalState`` need SQLAlchemy) load on first use.
The 1.x names of this module, ``DataSink`` and ``CompositeDataSink``, are
importable from here too.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..data_sink import CompositeDataSink, DataSink
from .disk import DiskStore, DiskStoreError
from .memory import MemoryStore
from .redis import RedisStore
from .serializers import (
    JsonSerializer,
    PickleSerializer,
    SerializationError,
    Serializer,
    SignedPickleSerializer,
    SignedSerializer,
    make_serializer,
)

_LAZY = {
    "AuditRecorder": ".audit",
    "DamagedBlobError": ".audit",
    "Catalog": ".catalog",
    "LocalState": ".catalog",
}

__all__ = [
    "AuditRecorder",
    "Catalog",
    "CompositeDataSink",
    "DamagedBlobError",
    "DataSink",
    "DiskStore",
    "DiskStoreError",
    "JsonSerializer",
    "LocalState",
    "MemoryStore",
    "PickleSerializer",
    "RedisStore",
    "SerializationError",
    "Serializer",
    "SignedPickleSerializer",
    "SignedSerializer",
    "make_serializer",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
