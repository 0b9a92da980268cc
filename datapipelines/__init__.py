"""datapipelines: tiered, typed cache pipelines.

``pipeline.get(Type, query)`` asks memory, disk, Redis and remote sources in
order, converts through the cheapest transformer chain, and writes the value
back into every faster tier. The 1.x public API is importable from here.
"""

import importlib
from typing import Any

from .breaker import CircuitBreaker
from .cache_mode import CacheMode
from .context import TYPE_WILDCARD, PipelineContext
from .errors import (
    ConfigurationError,
    DataPipelinesError,
    NoConversionError,
    NotFoundError,
    QueryKeyError,
    UnsupportedError,
)
from .flight import RedisLock
from .functions import (
    CachedFunction,
    FunctionSink,
    FunctionSource,
    FunctionTransformer,
    sink,
    source,
    transformer,
)
from .keys import key_for, set_schema_version
from .pipeline import DataPipeline, Result, current_session
from .policy import Policy
from .queries import (
    BoundKeyExistenceError,
    MissingKeyError,
    Query,
    QueryValidationError,
    QueryValidator,
    QueryValidatorStructureError,
    WrongValueTypeError,
    validate_query,
)
from .sink import CompositeDataSink, DataSink
from .source import CompositeDataSource, DataSource
from .store import MISSING, Store
from .tier import BATCH_KEY
from .transformer import CompositeDataTransformer, DataTransformer

__version__ = "2.0.0.dev0"

# Parts with optional dependencies (SQLAlchemy, httpx) load on first use.
_LAZY = {
    "Inventory": ".inventory",
    "HttpSource": ".http",
    "RawResponse": ".remote",
    "RemoteError": ".remote",
    "ResponseRecorder": ".remote",
    "register_adapter": ".remote",
    "RedisInvalidation": ".invalidation",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BATCH_KEY",
    "CachedFunction",
    "FunctionSink",
    "FunctionSource",
    "FunctionTransformer",
    "MISSING",
    "TYPE_WILDCARD",
    "BoundKeyExistenceError",
    "CacheMode",
    "CircuitBreaker",
    "CompositeDataSink",
    "CompositeDataSource",
    "CompositeDataTransformer",
    "ConfigurationError",
    "DataPipeline",
    "DataPipelinesError",
    "DataSink",
    "DataSource",
    "DataTransformer",
    "HttpSource",
    "Inventory",
    "MissingKeyError",
    "NoConversionError",
    "NotFoundError",
    "PipelineContext",
    "Policy",
    "Query",
    "QueryKeyError",
    "QueryValidationError",
    "QueryValidator",
    "QueryValidatorStructureError",
    "RawResponse",
    "RedisInvalidation",
    "RedisLock",
    "RemoteError",
    "ResponseRecorder",
    "Result",
    "Store",
    "UnsupportedError",
    "WrongValueTypeError",
    "current_session",
    "key_for",
    "register_adapter",
    "set_schema_version",
    "sink",
    "source",
    "transformer",
    "validate_query",
]
