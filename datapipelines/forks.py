"""Fork safety: what a child process must not inherit as it is.

After ``os.fork()`` only the forking thread exists in the child. A lock another
thread held stays locked, a single-flight call another thread led never ends,
a thread pool believes in threads it no longer has, and an SQLite connection
must not be used again. Objects that hold such things register here and get
``_after_fork()`` called in every child, before the child runs anything else.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

_OBJECTS: weakref.WeakSet[Any] = weakref.WeakSet()


def reset_in_children(obj: Any) -> None:
    """Call ``obj._after_fork()`` in each child forked from now on (while ``obj`` lives)."""
    _OBJECTS.add(obj)


def _reset_all() -> None:
    for obj in list(_OBJECTS):
        obj._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all)
