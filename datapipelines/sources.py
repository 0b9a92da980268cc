"""The 1.x module ``datapipelines.sources``, kept so imports written against 1.x still work."""

from .data_source import CompositeDataSource, DataSource

__all__ = ["CompositeDataSource", "DataSource"]
