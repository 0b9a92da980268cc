"""os.fork(): a child starts with the parent's pipeline but none of its threads. Single-flight
calls, locks, refresh threads and connections of the parent must not make the child hang."""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest

from datapipelines import DataPipeline
from datapipelines.policy import Policy
from datapipelines.sinks import MemoryStore
from datapipelines.sinks.disk import DiskStore
from tests.support.clock import FakeClock
from tests.support.resilience import CountingSource, Reading, wait_until

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() exists on POSIX only")

Q = {"id": 1}


def in_a_child(check: Callable[[], bool], within: float = 30.0) -> None:
    """Fork; ``check()`` runs in the child, which must return True before ``within`` seconds."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(int(within))  # a hung child dies instead of hanging the test run
            code = 0 if check() else 1
        except BaseException:
            traceback.print_exc()
            code = 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + within + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child hung")
        time.sleep(0.01)
    if os.WIFSIGNALED(status):
        raise AssertionError(f"the child was killed by signal {os.WTERMSIG(status)} (it hung)")
    assert os.WEXITSTATUS(status) == 0, "the check failed in the child (its traceback is above)"


def test_a_child_forked_with_a_miss_in_flight_fetches_that_key_itself() -> None:
    source = CountingSource()
    pipeline = DataPipeline([MemoryStore(), source])
    source.release = threading.Event()
    caller = threading.Thread(target=lambda: pipeline.get(Reading, Q))
    caller.start()
    try:
        wait_until(lambda: source.calls == 1, what="the parent's call to be in flight")

        def child() -> bool:
            source.release = None  # the child's own call does not wait
            return pipeline.get(Reading, Q) == Reading(1, "v1")

        in_a_child(child)
    finally:
        assert source.release is not None
        source.release.set()
        caller.join(10)


def test_a_child_forked_after_a_background_refresh_refreshes_again(fake_clock: FakeClock) -> None:
    memory, source = MemoryStore(clock=fake_clock), CountingSource()
    pipeline = DataPipeline(
        [memory, source], policies={Reading: Policy(ttl=60, soft_ttl=10)}, clock=fake_clock
    )
    pipeline.get(Reading, Q)
    source.version = 2
    fake_clock.advance(15)
    pipeline.get(Reading, Q)  # stale-while-revalidate: refreshed on the pipeline's pool
    wait_until(lambda: memory.lookup(Reading, Q) == Reading(1, "v2"), what="the parent's refresh")

    def child() -> bool:
        source.version = 3
        fake_clock.advance(15)
        assert pipeline.get(Reading, Q) == Reading(1, "v2")  # served at once, refreshed behind
        wait_until(
            lambda: memory.lookup(Reading, Q) == Reading(1, "v3"), timeout=20, what="the child's refresh"
        )
        return True

    in_a_child(child)


def test_a_child_forked_while_a_thread_held_a_memory_tier_lock_does_not_hang() -> None:
    memory, source = MemoryStore(), CountingSource()
    pipeline = DataPipeline([memory, source])
    pipeline.get(Reading, Q)
    holding, done = threading.Event(), threading.Event()

    def hold() -> None:
        with memory._lock:  # a thread in the middle of a lookup at the instant of fork()
            holding.set()
            done.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        in_a_child(lambda: pipeline.get(Reading, Q) == Reading(1, "v1"))
    finally:
        done.set()
        holder.join(10)
    assert pipeline.get(Reading, Q) == Reading(1, "v1")
    assert source.calls == 1  # the parent kept its cache


def test_a_child_opens_its_own_disk_connection_and_both_processes_share_the_directory(tmp_path: Path) -> None:
    store = DiskStore(tmp_path / "cache")
    store.store_many(Reading, [(Q, Reading(1, "parent"))])
    inherited = store._cache

    def child() -> bool:
        store.close()  # before any use: must leave the inherited connection alone
        assert getattr(inherited._local, "con", None) is not None  # still open, untouched
        assert store.lookup(Reading, Q) == Reading(1, "parent")
        assert store._cache is not inherited  # SQLite connections must not cross fork()
        store.store_many(Reading, [({"id": 2}, Reading(2, "child"))])
        store.close()
        return True

    in_a_child(child)
    assert store._cache is inherited
    assert store.lookup(Reading, {"id": 2}) == Reading(2, "child")
    store.store_many(Reading, [({"id": 3}, Reading(3, "parent"))])
    assert store.lookup(Reading, {"id": 3}) == Reading(3, "parent")
