"""SingleFlight shared by threads and asyncio tasks: one call per key, cancellation, errors, loops."""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from datapipelines import ConfigurationError, SyncWaitOnLoopError
from datapipelines.flight import SingleFlight, _Call
from tests.support.resilience import wait_until

KEYS = [f"key-{n}" for n in range(10)]


def threads_inside(function: Callable[..., Any]) -> int:
    """How many threads have ``function`` on their stack right now."""
    code = function.__code__
    inside = 0
    for frame in sys._current_frames().values():
        while frame is not None and frame.f_code is not code:
            frame = frame.f_back  # type: ignore[assignment]
        inside += frame is not None
    return inside


class Source:
    """Counts calls per key; a sync and an async face, both held until ``release`` is set."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.calls: dict[str, int] = {}
        self.finished: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self._lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1

    def fetch(self, key: str) -> str:
        self._count(key)
        self.release.wait(30)
        time.sleep(self.delay)
        self.finished.append(key)
        return f"value of {key}"

    async def afetch(self, key: str) -> str:
        self._count(key)
        while not self.release.is_set():
            await asyncio.sleep(0.005)
        await asyncio.sleep(self.delay)
        self.finished.append(key)
        return f"value of {key}"

    @property
    def total(self) -> int:
        return sum(self.calls.values())


def aget(flight: SingleFlight, source: Source, key: str) -> Any:
    return flight.arun(key, lambda: source.afetch(key))


def test_1000_tasks_over_10_keys_cause_10_calls() -> None:
    flight, source = SingleFlight(), Source(delay=0.2)

    async def main() -> list[Any]:
        return await asyncio.gather(*(aget(flight, source, KEYS[n % 10]) for n in range(1000)))

    outcomes = asyncio.run(main())
    assert source.calls == {key: 1 for key in KEYS}
    assert [value for value, _ in outcomes] == [f"value of {KEYS[n % 10]}" for n in range(1000)]
    assert sum(joined for _, joined in outcomes) == 990


def test_1000_tasks_and_40_threads_over_10_keys_cause_10_calls() -> None:
    flight, source = SingleFlight(), Source()
    source.release.clear()
    results: list[Any] = []

    def thread(n: int) -> None:
        key = KEYS[n % 10]
        results.append(flight.run(key, lambda: source.fetch(key)))

    threads = [threading.Thread(target=thread, args=(n,)) for n in range(40)]

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(aget(flight, source, KEYS[n % 10])) for n in range(1000)]
        for started in threads:
            started.start()
        await asyncio.sleep(0)  # every task has joined or started its key's call
        # Every thread is inside a call: waiting for one, or leading it.
        await asyncio.to_thread(
            wait_until,
            lambda: threads_inside(_Call.wait) + threads_inside(SingleFlight._lead) == 40,
            what="40 threads in the flights",
        )
        source.release.set()
        return await asyncio.gather(*tasks)

    outcomes = asyncio.run(main())
    for finished in threads:
        finished.join(10)
    assert source.calls == {key: 1 for key in KEYS}
    assert len(results) == 40
    assert {value for value, _ in results + outcomes} == {f"value of {key}" for key in KEYS}


def test_a_cancelled_leader_cancels_only_itself() -> None:
    flight, source = SingleFlight(), Source(delay=0.05)

    async def main() -> None:
        leader = asyncio.ensure_future(aget(flight, source, "k"))
        await asyncio.sleep(0)
        waiters = [asyncio.ensure_future(aget(flight, source, "k")) for _ in range(5)]
        await asyncio.sleep(0)
        leader.cancel()
        assert await asyncio.gather(*waiters) == [("value of k", True)] * 5
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert source.calls == {"k": 1}
        # Nothing left behind: the next caller makes a call of its own.
        assert await aget(flight, source, "k") == ("value of k", False)
        assert source.calls == {"k": 2}

    asyncio.run(main())


def test_cancelling_every_caller_lets_the_call_finish_and_leaves_no_key_stuck() -> None:
    flight, source = SingleFlight(), Source(delay=0.05)

    async def main() -> None:
        callers = [asyncio.ensure_future(aget(flight, source, "k")) for _ in range(20)]
        await asyncio.sleep(0)
        for caller in callers:
            caller.cancel()
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
        # The shared call runs on to its end (in a pipeline: its write-back).
        await asyncio.to_thread(wait_until, lambda: source.finished == ["k"], what="the call to finish")
        assert await aget(flight, source, "k") == ("value of k", False)
        assert source.calls == {"k": 2}

    asyncio.run(main())


def test_cancelling_a_random_half_of_1000_tasks_leaves_the_others_their_values() -> None:
    flight, source = SingleFlight(), Source(delay=0.1)
    chosen = random.Random(16)

    async def main() -> None:
        tasks = [asyncio.ensure_future(aget(flight, source, KEYS[n % 10])) for n in range(1000)]
        await asyncio.sleep(0)
        cancelled = set(chosen.sample(range(1000), 500))
        for n in cancelled:
            tasks[n].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for n, outcome in enumerate(outcomes):
            if n in cancelled:
                assert isinstance(outcome, asyncio.CancelledError)
            else:
                assert outcome[0] == f"value of {KEYS[n % 10]}"
        assert source.calls == {key: 1 for key in KEYS}
        again = await asyncio.gather(*(aget(flight, source, key) for key in KEYS))
        assert again == [(f"value of {key}", False) for key in KEYS]

    asyncio.run(main())


class SourceFailure(Exception):
    pass


def test_an_error_of_the_call_reaches_every_waiter_of_both_kinds() -> None:
    flight = SingleFlight()
    release = threading.Event()
    calls = []

    async def failing() -> Any:
        calls.append(1)
        while not release.is_set():
            await asyncio.sleep(0.005)
        raise SourceFailure("the source is down")

    def never() -> Any:
        raise AssertionError("a waiter must not call")

    errors: list[BaseException] = []

    def thread() -> None:
        try:
            flight.run("k", never)
        except SourceFailure as error:
            errors.append(error)

    threads = [threading.Thread(target=thread) for _ in range(8)]

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(flight.arun("k", failing))]
        await asyncio.sleep(0)
        tasks += [asyncio.ensure_future(flight.arun("k", never)) for _ in range(8)]
        for started in threads:
            started.start()
        await asyncio.to_thread(wait_until, lambda: threads_inside(_Call.wait) == 8, what="8 waiting threads")
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = asyncio.run(main())
    for finished in threads:
        finished.join(10)
    assert calls == [1]
    assert len(errors) == 8 and all(isinstance(outcome, SourceFailure) for outcome in outcomes)


class Interrupt(BaseException):
    """Like KeyboardInterrupt, without stopping the test run."""


def test_a_leader_raising_a_base_exception_hands_it_on_and_frees_the_key() -> None:
    flight = SingleFlight()
    entered, release = threading.Event(), threading.Event()

    def interrupted() -> Any:
        entered.set()
        release.wait(10)
        raise Interrupt()

    outcomes: list[BaseException] = []

    def waiter() -> None:
        try:
            flight.run("k", lambda: "not called")
        except Interrupt as error:
            outcomes.append(error)

    def leader() -> None:
        with pytest.raises(Interrupt):
            flight.run("k", interrupted)

    lead = threading.Thread(target=leader)
    lead.start()
    entered.wait(10)
    waiters = [threading.Thread(target=waiter) for _ in range(4)]
    for thread in waiters:
        thread.start()
    wait_until(lambda: threads_inside(_Call.wait) == 4, what="4 waiting threads")
    release.set()
    for thread in [lead, *waiters]:
        thread.join(10)
    assert len(outcomes) == 4
    assert flight.run("k", lambda: "fresh") == ("fresh", False)


def test_a_function_that_raises_before_it_awaits_still_frees_the_key() -> None:
    flight = SingleFlight()

    def not_a_coroutine() -> Any:
        raise SourceFailure("at once")

    async def main() -> None:
        with pytest.raises(SourceFailure):
            await flight.arun("k", not_a_coroutine)

        async def value() -> str:
            return "v"

        assert await flight.arun("k", value) == ("v", False)

    asyncio.run(main())


def test_one_registry_serves_two_event_loops_in_sequence() -> None:
    flight, source = SingleFlight(), Source(delay=0.01)

    async def burst() -> list[Any]:
        return await asyncio.gather(*(aget(flight, source, KEYS[n % 10]) for n in range(100)))

    for _ in range(2):
        assert {value for value, _ in asyncio.run(burst())} == {f"value of {k}" for k in KEYS}
    assert source.calls == {key: 2 for key in KEYS}


def test_a_flight_whose_loop_closes_is_started_over_by_its_other_waiters() -> None:
    flight, source = SingleFlight(), Source()
    source.release.clear()
    outcome: list[Any] = []

    async def lead_then_leave() -> None:
        asyncio.ensure_future(aget(flight, source, "k"))
        await asyncio.sleep(0)
        waiter.start()
        await asyncio.to_thread(wait_until, lambda: threads_inside(_Call.wait) == 1, what="a waiting thread")
        # asyncio.run ends here, cancelling the loop's tasks, the call's among them.

    def wait_for_it() -> None:
        outcome.append(flight.run("k", lambda: source.fetch("k")))

    waiter = threading.Thread(target=wait_for_it)
    asyncio.run(lead_then_leave())
    source.release.set()
    waiter.join(10)
    assert outcome == [("value of k", False)]  # it led the call that was started over
    assert source.calls == {"k": 2}


def test_two_threads_with_their_own_loops_share_the_calls() -> None:
    flight, source = SingleFlight(), Source()
    source.release.clear()
    joined = threading.Barrier(3)
    outcomes: list[Any] = []

    def loop_thread() -> None:
        async def main() -> list[Any]:
            tasks = [asyncio.ensure_future(aget(flight, source, KEYS[n % 10])) for n in range(200)]
            await asyncio.sleep(0)  # all 200 have joined a call
            await asyncio.to_thread(joined.wait, 10)
            return await asyncio.gather(*tasks)

        outcomes.extend(asyncio.run(main()))

    threads = [threading.Thread(target=loop_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    joined.wait(10)
    source.release.set()
    for thread in threads:
        thread.join(10)
    assert source.calls == {key: 1 for key in KEYS}
    assert len(outcomes) == 400 and sum(was_joined for _, was_joined in outcomes) == 390


def test_a_blocking_wait_on_the_loop_running_the_call_raises_instead_of_deadlocking() -> None:
    flight, source = SingleFlight(), Source(delay=0.05)

    async def main() -> None:
        leader = asyncio.ensure_future(aget(flight, source, "k"))
        await asyncio.sleep(0)
        with pytest.raises(SyncWaitOnLoopError, match="'k'") as raised:
            flight.run("k", lambda: source.fetch("k"))
        assert isinstance(raised.value, ConfigurationError)
        assert await leader == ("value of k", False)
        # Another key, or a call of another thread, may still be waited for on the loop.
        assert flight.run("other", lambda: "sync") == ("sync", False)

    asyncio.run(main())
    assert source.calls == {"k": 1}


def test_a_blocking_wait_on_a_loop_for_another_threads_call_waits() -> None:
    flight, source = SingleFlight(), Source()
    source.release.clear()
    leader = threading.Thread(target=lambda: flight.run("k", lambda: source.fetch("k")))
    leader.start()
    wait_until(lambda: source.calls == {"k": 1}, what="the thread to lead")

    async def main() -> Any:
        threading.Timer(0.05, source.release.set).start()
        return flight.run("k", lambda: "not called")

    assert asyncio.run(main()) == ("value of k", True)
    leader.join(10)
