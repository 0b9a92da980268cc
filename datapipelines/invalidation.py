"""Where :class:`RedisInvalidation` was imported from before it moved to :mod:`datapipelines.redis`."""

from .redis.invalidation import RedisInvalidation

__all__ = ["RedisInvalidation"]
