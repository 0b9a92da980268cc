"""The import path :class:`RedisInvalidation` had before it moved to :mod:`datapipelines.redis.invalidation`."""

from .redis.invalidation import RedisInvalidation

__all__ = ["RedisInvalidation"]
