"""Single-flight: concurrent identical misses cause one source call.

One :class:`SingleFlight` registry serves threads and asyncio tasks alike: a
caller of :meth:`SingleFlight.run` (a thread) and a caller of
:meth:`SingleFlight.arun` (a task, on any event loop) join each other's call of
the same key. An async call runs as a task of its own, so cancelling any
caller, its leader included, cancels only that caller. Across processes,
:class:`~datapipelines.redis.lock.RedisLock` extends it.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import threading
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import ConfigurationError
from .forks import reset_in_children


class SyncWaitOnLoopError(ConfigurationError):
    """A blocking call would wait, on an event loop's thread, for an async call of that loop.

    The loop cannot run that call while its thread waits, so this is raised
    instead of a deadlock: from a coroutine, use the async API (``await ...``).
    """


class _Call:
    __slots__ = ("leader", "loop", "done", "result", "error", "abandoned", "futures", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.leader = threading.get_ident()
        self.loop = loop  # the loop running the call as a task; None for a thread's call
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None
        # The call's task was cancelled (its loop closed, say): its callers start over.
        self.abandoned = False
        self.futures: list[asyncio.Future[None]] = []  # one per async caller, set when done
        self.task: asyncio.Task[Any] | None = None

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result

    def wait(self, key: Any) -> None:
        """Block until the call is done; refuse when that would block the call itself."""
        if self.loop is not None and self.loop is running_loop():
            raise SyncWaitOnLoopError(
                f"A blocking call for key {key!r} would wait on the thread of the event loop that "
                "runs the async call of the same key, which cannot finish while that thread waits; "
                "await the async API from coroutines instead"
            )
        self.done.wait()


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # a done future's caller was cancelled: nobody waits on it
        future.set_result(None)


async def _awaited(function: Callable[[], Awaitable[Any]]) -> Any:
    # Inside the task, so that even a function that raises at once settles the call.
    return await function()


class SingleFlight:
    """Runs one call per key at a time; callers that arrive meanwhile share its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[Any, _Call] = {}
        reset_in_children(self)

    def _after_fork(self) -> None:
        # Calls led by the parent's other threads would never end here: forget them.
        me = threading.get_ident()
        self._lock = threading.Lock()
        self._calls = {key: call for key, call in self._calls.items() if call.leader == me}

    def run(self, key: Any, function: Callable[[], Any]) -> tuple[Any, bool]:
        """``(result, joined)``: joined is True when another caller's call was shared.

        Raises SyncWaitOnLoopError rather than wait on the thread of the loop running the call.
        """
        while True:
            call, leader = self._join(key, None, None)
            if leader:
                return self._lead(key, call, function), False
            call.wait(key)
            if not call.abandoned:
                return call.outcome(), True

    async def arun(self, key: Any, function: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """:meth:`run` for coroutines: ``function()`` is awaited in a task of its own, which
        cancelling a caller (its starter included) leaves running for the others."""
        loop = asyncio.get_running_loop()
        while True:
            done = loop.create_future()
            call, leader = self._join(key, loop, done)
            if leader:
                call.task = loop.create_task(_awaited(function))
                call.task.add_done_callback(functools.partial(self._task_done, key, call))
            await done  # cancelling this caller cancels this future only, never the task
            if not call.abandoned:
                return call.outcome(), not leader

    def _join(
        self, key: Any, loop: asyncio.AbstractEventLoop | None, done: asyncio.Future[None] | None
    ) -> tuple[_Call, bool]:
        """The call of ``key``, started if there is none, and whether it was; ``done`` joins it."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call(loop)
            if done is not None:
                call.futures.append(done)
        return call, leader

    def _lead(self, key: Any, call: _Call, function: Callable[[], Any]) -> Any:
        try:
            call.result = function()
            return call.result
        except BaseException as error:
            call.error = error
            raise
        finally:
            self._settle(key, call)

    def _task_done(self, key: Any, call: _Call, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            call.abandoned = True
        elif task.exception() is not None:
            call.error = task.exception()
        else:
            call.result = task.result()
        self._settle(key, call)

    def _settle(self, key: Any, call: _Call) -> None:
        """End ``call``: the next caller of ``key`` starts a new one; wake every waiter."""
        with self._lock:
            del self._calls[key]
            futures, call.futures = call.futures, []
        call.done.set()
        here = running_loop()
        for future in futures:
            loop = future.get_loop()
            if loop is here:
                _wake(future)
                continue
            try:
                loop.call_soon_threadsafe(_wake, future)
            except RuntimeError:
                pass  # that loop is closed, and with it the task that waited


def __getattr__(name: str) -> Any:
    # RedisLock lived here; it loads redis, so only when asked for.
    if name == "RedisLock":
        return importlib.import_module(".redis.lock", __package__).RedisLock
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
