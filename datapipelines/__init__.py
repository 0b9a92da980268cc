"""datapipelines: tiered, typed cache pipelines.

``pipeline.get(Type, query)`` asks memory, disk, Redis and remote sources in
order, converts through the cheapest transformer chain, and writes the value
back into every faster tier. The 1.x public API is importable from here.
"""

from .context import TYPE_WILDCARD, PipelineContext
from .errors import (
    ConfigurationError,
    DataPipelinesError,
    NoConversionError,
    NotFoundError,
    UnsupportedError,
)
from .keys import key_for, set_schema_version
from .pipeline import BATCH_KEY, DataPipeline, current_session
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
from .transformer import CompositeDataTransformer, DataTransformer

__version__ = "2.0.0.dev0"

__all__ = [
    "BATCH_KEY",
    "MISSING",
    "TYPE_WILDCARD",
    "BoundKeyExistenceError",
    "CompositeDataSink",
    "CompositeDataSource",
    "CompositeDataTransformer",
    "ConfigurationError",
    "DataPipeline",
    "DataPipelinesError",
    "DataSink",
    "DataSource",
    "DataTransformer",
    "MissingKeyError",
    "NoConversionError",
    "NotFoundError",
    "PipelineContext",
    "Query",
    "QueryValidationError",
    "QueryValidator",
    "QueryValidatorStructureError",
    "Store",
    "UnsupportedError",
    "WrongValueTypeError",
    "current_session",
    "key_for",
    "set_schema_version",
    "validate_query",
]
