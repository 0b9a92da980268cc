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
from .data_sink import CompositeDataSink, DataSink
from .data_source import CompositeDataSource, DataSource
from .data_transformer import CompositeDataTransformer, DataTransformer
from .errors import (
    ConfigurationError,
    DataPipelinesError,
    NoConversionError,
    NotFoundError,
    QueryKeyError,
    UnsupportedError,
)
from .flight import SyncWaitOnLoopError
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
from .store import MISSING, Store
from .tier import BATCH_KEY

__version__ = "2.0.0.dev0"

# Parts with optional clients (SQLAlchemy, httpx, redis-py) load on first use:
# importing datapipelines loads none of them (tests/project/test_layering.py).
_LAZY = {
    "Inventory": ".inventory",
    "HttpSource": ".http",
    "AsyncHttpSource": ".async_http",
    "RawResponse": ".remote",
    "RemoteError": ".remote",
    "ResponseRecorder": ".remote",
    "register_adapter": ".remote",
    "RedisInvalidation": ".redis.invalidation",
    "RedisLock": ".redis.lock",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AsyncHttpSource",
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
    "SyncWaitOnLoopError",
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
