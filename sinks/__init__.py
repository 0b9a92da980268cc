"""Built-in tiers, installed as ``datapipelines.sinks``.

Each module holds one store; import the ones you use.
"""

from .memory import MemoryStore

__all__ = ["MemoryStore"]
