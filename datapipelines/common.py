"""The 1.x module ``datapipelines.common``, kept so imports written against 1.x still work."""

from .context import TYPE_WILDCARD, PipelineContext
from .errors import NotFoundError, UnsupportedError

__all__ = ["TYPE_WILDCARD", "NotFoundError", "PipelineContext", "UnsupportedError"]
