"""The 1.x module ``datapipelines.pipelines``, kept so imports written against 1.x still work."""

from .errors import NoConversionError
from .pipeline import DataPipeline

__all__ = ["DataPipeline", "NoConversionError"]
