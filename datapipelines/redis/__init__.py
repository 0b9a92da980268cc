"""Everything that talks to Redis beside the Redis tier itself (``datapipelines.sinks.redis``).

- :mod:`.lock`: :class:`~datapipelines.redis.lock.RedisLock`, the per-key lock processes
  sharing a Redis take so that one of them calls a source for a missing key;
- :mod:`.invalidation`: :class:`~datapipelines.redis.invalidation.RedisInvalidation`, which
  drops other processes' memory entries over pub/sub;
- :mod:`.testing`: private ``redis-server`` processes and a server that never answers, for
  tests and benchmarks that must kill or stall Redis without touching a shared one.

Importing :mod:`datapipelines` loads none of them, so redis-py loads with the part that needs it.
"""
