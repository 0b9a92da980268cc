"""Resilience in one process: single-flight, stale serving, negative caching, SWR, jitter, breakers, stats."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from datapipelines import MISSING, DataPipeline, NotFoundError
from datapipelines.breaker import CircuitBreaker
from datapipelines.flight import SingleFlight
from datapipelines.policy import Policy
from datapipelines.sinks import MemoryStore
from tests.support.clock import FakeClock
from tests.support.resilience import CountingSource, Reading, wait_until

Q = {"id": 1}


def threads_inside(function: Callable[..., Any]) -> int:
    """How many threads have ``function`` on their stack right now."""
    code = function.__code__
    inside = 0
    for frame in sys._current_frames().values():
        while frame is not None and frame.f_code is not code:
            frame = frame.f_back  # type: ignore[assignment]
        inside += frame is not None
    return inside


def ask_at_once(pipeline: DataPipeline, source: CountingSource, callers: int, query: Any = Q) -> list[Any]:
    """``callers`` threads get ``query`` while the source is held; released once all wait in one flight."""
    source.release = threading.Event()
    outcomes: list[Any] = []

    def get() -> None:
        try:
            outcomes.append(pipeline.get(Reading, query))
        except Exception as error:
            outcomes.append(error)

    threads = [threading.Thread(target=get) for _ in range(callers)]
    for thread in threads:
        thread.start()
    wait_until(lambda: threads_inside(SingleFlight.run) == callers, what=f"{callers} callers in one flight")
    source.release.set()
    for thread in threads:
        thread.join(10)
    source.release = None
    return outcomes


# -- single-flight -----------------------------------------------------------------------
def test_64_threads_on_one_cold_key_cause_one_source_call_and_share_the_value() -> None:
    source, memory = CountingSource(), MemoryStore()
    pipeline = DataPipeline([memory, source])
    values = ask_at_once(pipeline, source, 64)
    assert source.calls == 1
    assert len(values) == 64 and all(value is values[0] for value in values)
    assert values[0] == Reading(1, "v1")
    stats = pipeline.stats()
    assert stats["sources"]["CountingSource(origin)"]["calls"] == 1
    assert stats["sources"]["CountingSource(origin)"]["joins"] == 63
    assert stats["tiers"]["MemoryStore(maxsize=10000)"]["puts"] == 1


def test_threads_that_share_a_failing_call_all_get_the_same_error() -> None:
    source = CountingSource()
    source.error = TimeoutError("origin timed out")
    pipeline = DataPipeline([MemoryStore(), source])
    errors = ask_at_once(pipeline, source, 16)
    assert source.calls == 1
    assert len(errors) == 16 and all(error is source.error for error in errors)


class PausingStore(MemoryStore):
    """A memory tier whose misses in the thread named "late" wait until ``resume`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.resume = threading.Event()

    def _load_entry(self, key: str, type_: Any) -> Any:
        found = super()._load_entry(key, type_)
        if threading.current_thread().name == "late":
            self.resume.wait(10)
        return found


def test_a_caller_that_missed_while_another_call_was_in_flight_does_not_call_the_source_again() -> None:
    source, memory = CountingSource(), PausingStore()
    pipeline = DataPipeline([memory, source])
    late = threading.Thread(target=pipeline.get, args=(Reading, Q), name="late")
    late.start()
    wait_until(lambda: threads_inside(PausingStore._load_entry) == 1, what="the late caller's miss")
    assert pipeline.get(Reading, Q) == Reading(1, "v1")
    memory.resume.set()
    late.join(10)
    assert source.calls == 1


class CountingMemory(MemoryStore):
    """A memory tier that counts how often it is asked."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.asked = 0

    def lookup_fresh(self, type_: Any, query: Any, max_age: float) -> Any:
        self.asked += 1
        return super().lookup_fresh(type_, query, max_age)

    def _load_entry(self, key: str, type_: Any) -> Any:
        self.asked += 1
        return super()._load_entry(key, type_)


def test_a_fresh_hit_of_a_type_with_a_policy_asks_the_memory_tier_once() -> None:
    memory = CountingMemory()
    pipeline = DataPipeline([memory, CountingSource()], policies={Reading: Policy(ttl=3600, soft_ttl=600)})
    pipeline.get(Reading, Q)
    memory.asked = 0
    for _ in range(10):
        assert pipeline.get(Reading, Q) == Reading(1, "v1")
    assert memory.asked == 10


# -- policies: fail-safe, negative caching, stale-while-revalidate, jitter -----------------
def test_a_failing_source_serves_the_stale_value_up_to_max_stale_then_raises(
    fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    source, memory = CountingSource(), MemoryStore(clock=fake_clock)
    pipeline = DataPipeline(
        [memory, source], policies={Reading: Policy(ttl=10, max_stale=20)}, clock=fake_clock
    )
    assert pipeline.get(Reading, Q) == Reading(1, "v1")
    source.error = TimeoutError("origin timed out")

    fake_clock.advance(9)
    assert pipeline.get_result(Reading, Q) == (Reading(1, "v1"), False, "MemoryStore(maxsize=10000)")
    assert source.calls == 1  # fresh: the source is not asked

    fake_clock.advance(6)  # 15 s old: past ttl, within max_stale
    with caplog.at_level(logging.WARNING, logger="datapipelines.pipeline"):
        result = pipeline.get_result(Reading, Q)
    assert result == (Reading(1, "v1"), True, "MemoryStore(maxsize=10000)")
    assert source.calls == 2
    assert "serving a stale" in caplog.text and "origin timed out" in caplog.text
    assert pipeline.stats()["sources"]["CountingSource(origin)"]["stale"] == 1

    fake_clock.advance(16)  # 31 s old: past ttl + max_stale
    with pytest.raises(TimeoutError, match="origin timed out"):
        pipeline.get(Reading, Q)
    assert source.calls == 3


def test_a_stale_value_is_replaced_once_the_source_answers_again(fake_clock: FakeClock) -> None:
    source, memory = CountingSource(), MemoryStore(clock=fake_clock)
    pipeline = DataPipeline(
        [memory, source], policies={Reading: Policy(ttl=10, max_stale=20)}, clock=fake_clock
    )
    pipeline.get(Reading, Q)
    fake_clock.advance(15)
    source.version = 2
    assert pipeline.get_result(Reading, Q) == (Reading(1, "v2"), False, "CountingSource(origin)")
    assert pipeline.get_result(Reading, Q).source == "MemoryStore(maxsize=10000)"


def test_a_not_found_is_remembered_for_negative_ttl(fake_clock: FakeClock) -> None:
    source = CountingSource()
    source.missing = {1}
    pipeline = DataPipeline(
        [MemoryStore(clock=fake_clock), source], policies={Reading: Policy(negative_ttl=5)}, clock=fake_clock
    )
    for _ in range(3):
        with pytest.raises(NotFoundError):
            pipeline.get(Reading, Q)
    assert source.calls == 1
    assert pipeline.stats()["sources"]["CountingSource(origin)"]["negative"] == 2

    fake_clock.advance(5)
    with pytest.raises(NotFoundError):
        pipeline.get(Reading, Q)
    assert source.calls == 2

    source.missing.clear()
    pipeline.invalidate(Reading, Q)  # forgets the remembered miss at once
    assert pipeline.get(Reading, Q) == Reading(1, "v1")
    assert source.calls == 3


def test_without_negative_ttl_every_miss_asks_the_source() -> None:
    source = CountingSource()
    source.missing = {1}
    pipeline = DataPipeline([MemoryStore(), source], policies={Reading: Policy(ttl=10)})
    for _ in range(3):
        with pytest.raises(NotFoundError):
            pipeline.get(Reading, Q)
    assert source.calls == 3


def test_a_soft_expired_hit_is_served_at_once_and_refreshed_once_in_the_background(
    fake_clock: FakeClock,
) -> None:
    source, memory = CountingSource(), MemoryStore(clock=fake_clock)
    pipeline = DataPipeline(
        [memory, source], policies={Reading: Policy(ttl=60, soft_ttl=10)}, clock=fake_clock
    )
    pipeline.get(Reading, Q)
    source.version, source.release = 2, threading.Event()
    fake_clock.advance(15)
    # The refresh waits in the source; meanwhile every caller gets the old value without waiting.
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: pipeline.get_result(Reading, Q), range(40)))
    assert {result for result in results} == {(Reading(1, "v1"), False, "MemoryStore(maxsize=10000)")}
    wait_until(lambda: source.calls == 2, what="the background refresh")
    source.release.set()
    wait_until(lambda: memory.lookup(Reading, Q) == Reading(1, "v2"), what="the refreshed value")
    assert source.calls == 2
    assert pipeline.get(Reading, Q) == Reading(1, "v2")


def test_jitter_spreads_the_expiry_of_keys_written_together(fake_clock: FakeClock) -> None:
    def expired_after(policy: Policy, seconds: float) -> int:
        memory = MemoryStore(clock=fake_clock)
        pipeline = DataPipeline([memory, CountingSource()], policies={Reading: policy}, clock=fake_clock)
        queries = [{"id": n} for n in range(200)]
        for query in queries:
            pipeline.get(Reading, query)  # written with the policy's lifetime
        start = fake_clock.now
        fake_clock.advance(seconds)
        gone = sum(memory.lookup(Reading, query) is MISSING for query in queries)
        fake_clock.now = start
        return gone

    assert expired_after(Policy(ttl=100), 99.9) == 0
    assert expired_after(Policy(ttl=100), 100) == 200
    assert 0 < expired_after(Policy(ttl=100, jitter=0.5), 75) < 200
    assert expired_after(Policy(ttl=100, jitter=0.5), 49.9) == 0


# -- circuit breaker and strict mode ---------------------------------------------------------
class FlakyStore(MemoryStore):
    """A memory tier that raises ConnectionError while ``down``; counts every call that reached it."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.down = False
        self.attempts = 0

    def __repr__(self) -> str:
        return "FlakyStore()"

    def _reach(self) -> None:
        self.attempts += 1
        if self.down:
            raise ConnectionError("Connection refused")

    def lookup(self, type_: Any, query: Any) -> Any:
        self._reach()
        return super().lookup(type_, query)

    def _load_entry(self, key: str, type_: Any) -> Any:
        self._reach()
        return super()._load_entry(key, type_)

    def _load_many_entries(self, keys: Any, type_: Any) -> list[Any]:
        self._reach()
        return super()._load_many_entries(keys, type_)

    def _save_many(self, entries: Any, seconds: Any, type_: Any) -> None:
        self._reach()
        super()._save_many(entries, seconds, type_)


def breaker_pipeline(clock: FakeClock, **options: Any) -> tuple[DataPipeline, FlakyStore, CountingSource]:
    tier, source = FlakyStore(), CountingSource()
    pipeline = DataPipeline(
        [tier, source], breaker=lambda: CircuitBreaker(failures=2, cooldown=5, clock=clock), **options
    )
    return pipeline, tier, source


def test_a_failing_tier_opens_its_breaker_is_skipped_then_probed_and_closed(
    fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, tier, source = breaker_pipeline(fake_clock)
    tier.down = True
    with caplog.at_level(logging.WARNING, logger="datapipelines.pipeline"):
        # The lookup fails; the write-back into the tier that just failed is not tried.
        assert pipeline.get(Reading, Q) == Reading(1, "v1")
    assert "FlakyStore() failed on lookup" in caplog.text
    state = pipeline.stats()["tiers"]["FlakyStore()"]
    assert (state["errors"], state["skips"], state["breaker"]) == (1, 1, "closed")
    assert pipeline.get(Reading, Q) == Reading(1, "v1")  # the second failure opens the breaker
    state = pipeline.stats()["tiers"]["FlakyStore()"]
    assert (state["errors"], state["skips"], state["breaker"]) == (2, 2, "open")

    assert pipeline.get(Reading, Q) == Reading(1, "v1")  # lookup and write-back skipped
    state = pipeline.stats()["tiers"]["FlakyStore()"]
    assert (state["errors"], state["skips"], state["breaker"]) == (2, 4, "open")

    fake_clock.advance(5)
    assert pipeline.stats()["tiers"]["FlakyStore()"]["breaker"] == "half-open"
    assert pipeline.get(Reading, Q) == Reading(1, "v1")  # the probe fails: open for another cool-down
    assert pipeline.stats()["tiers"]["FlakyStore()"]["breaker"] == "open"

    fake_clock.advance(5)
    tier.down = False
    assert pipeline.get(Reading, Q) == Reading(1, "v1")  # the probe succeeds: closed, written back
    state = pipeline.stats()["tiers"]["FlakyStore()"]
    assert (state["breaker"], state["puts"]) == ("closed", 1)
    calls = source.calls
    assert pipeline.get(Reading, Q) == Reading(1, "v1")
    assert source.calls == calls  # hits resume


def test_hits_are_counted_right_after_a_tier_failed_on_write_back(fake_clock: FakeClock) -> None:
    pipeline, tier, _ = breaker_pipeline(fake_clock)
    tier.down = True
    pipeline.get(Reading, Q)  # one failed lookup, the write-back skipped
    pipeline.get(Reading, Q)  # the same: the breaker opens
    pipeline.get(Reading, Q)  # one skipped lookup, one skipped write-back
    fake_clock.advance(5)
    tier.down = False
    pipeline.get(Reading, Q)  # the probe: a miss, then a write-back
    for _ in range(3):
        pipeline.get(Reading, Q)
    state = pipeline.stats()["tiers"]["FlakyStore()"]
    assert (state["hits"], state["misses"], state["errors"], state["skips"], state["puts"]) == (3, 1, 2, 4, 1)


def test_a_tier_whose_breaker_is_open_is_not_called_at_all(fake_clock: FakeClock) -> None:
    pipeline, tier, _ = breaker_pipeline(fake_clock)
    tier.down = True
    pipeline.get(Reading, Q)
    pipeline.get(Reading, Q)
    assert pipeline.stats()["tiers"]["FlakyStore()"]["breaker"] == "open"
    attempts = tier.attempts
    for _ in range(10):
        pipeline.get(Reading, Q)
    assert tier.attempts == attempts


def test_a_strict_pipeline_shows_the_tier_exception(fake_clock: FakeClock) -> None:
    pipeline, tier, source = breaker_pipeline(fake_clock, strict=True)
    tier.down = True
    with pytest.raises(ConnectionError, match="Connection refused"):
        pipeline.get(Reading, Q)
    assert source.calls == 0


# -- stats ----------------------------------------------------------------------------------------
COUNTERS = ("hits", "misses", "puts", "errors", "skips", "calls", "joins", "stale", "negative")


def test_counters_only_grow_when_batches_fail_or_are_skipped(fake_clock: FakeClock) -> None:
    pipeline, tier, _ = breaker_pipeline(fake_clock)
    readings: list[dict[str, Any]] = []

    def read() -> dict[str, Any]:
        state = pipeline.stats()["tiers"]["FlakyStore()"]
        if readings:
            dropped = {name for name in COUNTERS if state[name] < readings[-1][name]}
            assert not dropped, f"{sorted(dropped)} went down: {readings[-1]} -> {state}"
        readings.append(state)
        return state

    batch = [{"id": n} for n in range(3)]
    pipeline.get_batch(Reading, batch)
    pipeline.get_batch(Reading, batch)
    assert read()["hits"] == 3
    tier.down = True
    pipeline.get_batch(Reading, batch)  # the batch lookup fails (3 lookups), the write-back is not tried
    assert (read()["hits"], readings[-1]["errors"]) == (3, 3)
    pipeline.get_batch(Reading, batch)  # fails again: the breaker opens
    pipeline.get_batch(Reading, batch)  # skipped
    state = read()
    assert (state["hits"], state["errors"], state["breaker"]) == (3, 6, "open")
    fake_clock.advance(5)
    tier.down = False
    pipeline.get_batch(Reading, batch)  # the probe: 3 hits
    pipeline.get(Reading, {"id": 0})
    assert read()["hits"] == 7


def test_no_reading_of_stats_sees_hits_go_down_while_lookups_are_under_way(fake_clock: FakeClock) -> None:
    pipeline, tier, _ = breaker_pipeline(fake_clock)
    for n in range(50):
        pipeline.get(Reading, {"id": n})
    slow = threading.Event()
    done = threading.Event()
    reach = tier._reach

    def slow_reach() -> None:
        slow.set()
        time.sleep(0.002)
        reach()

    tier._reach = slow_reach  # type: ignore[method-assign]

    def traffic() -> None:
        for round_ in range(60):
            tier.down = round_ % 20 == 19
            for n in range(0, 50, 7):
                pipeline.get(Reading, {"id": n})
            if round_ % 5 == 0:
                pipeline.get_batch(Reading, [{"id": n} for n in range(5)])
            fake_clock.advance(1)
        done.set()

    worker = threading.Thread(target=traffic)
    worker.start()
    assert slow.wait(10)
    last = dict.fromkeys(COUNTERS, 0)
    while not done.is_set():
        state = pipeline.stats()["tiers"]["FlakyStore()"]
        dropped = {name for name in COUNTERS if state[name] < last[name]}
        assert not dropped, f"{sorted(dropped)} went down: {last} -> {state}"
        last = state
    worker.join(10)


def test_stats_count_what_happened_and_reset_stats_zeroes_them() -> None:
    memory, source = MemoryStore(), CountingSource()
    pipeline = DataPipeline([memory, source])
    pipeline.get(Reading, Q)
    for _ in range(3):
        pipeline.get(Reading, Q)
    source.missing = {2}
    with pytest.raises(NotFoundError):
        pipeline.get(Reading, {"id": 2})
    source.error = RuntimeError("origin broke")
    with pytest.raises(RuntimeError):
        pipeline.get(Reading, {"id": 3})

    def counts(entry: dict[str, Any]) -> dict[str, Any]:
        return {
            name: entry[name]
            for name in ("hits", "misses", "puts", "errors", "skips", "calls", "joins", "stale", "negative")
        }

    stats = pipeline.stats()
    assert set(stats) == {"tiers", "sources"}
    tier, origin = stats["tiers"]["MemoryStore(maxsize=10000)"], stats["sources"]["CountingSource(origin)"]
    assert counts(tier) == dict(
        hits=3, misses=3, puts=1, errors=0, skips=0, calls=0, joins=0, stale=0, negative=0
    )
    assert counts(origin) == dict(
        hits=0, misses=1, puts=0, errors=1, skips=0, calls=3, joins=0, stale=0, negative=0
    )
    assert tier["breaker"] == "closed"
    assert tier["p50_us"] > 0 and tier["p99_us"] >= tier["p50_us"]
    assert origin["p50_us"] > 0

    pipeline.reset_stats()
    stats = pipeline.stats()
    for entry in (stats["tiers"]["MemoryStore(maxsize=10000)"], stats["sources"]["CountingSource(origin)"]):
        assert set(counts(entry).values()) == {0}
        assert entry["p50_us"] is None and entry["p99_us"] is None
    pipeline.get(Reading, Q)
    assert pipeline.stats()["tiers"]["MemoryStore(maxsize=10000)"]["hits"] == 1


# -- batches under a policy ----------------------------------------------------------------
def test_get_batch_fetches_values_past_their_ttl_and_writes_with_the_policy_lifetime(
    fake_clock: FakeClock,
) -> None:
    source, memory = CountingSource(), MemoryStore(clock=fake_clock)
    pipeline = DataPipeline(
        [memory, source], policies={Reading: Policy(ttl=10, max_stale=50)}, clock=fake_clock
    )
    queries = [{"id": 1}, {"id": 2}]
    assert pipeline.get_batch(Reading, queries) == [Reading(1, "v1"), Reading(2, "v1")]
    assert source.calls == 2
    fake_clock.advance(5)
    assert pipeline.get_batch(Reading, queries) == [Reading(1, "v1"), Reading(2, "v1")]
    assert source.calls == 2  # fresh: served from memory
    source.version = 2
    fake_clock.advance(10)  # past ttl, within max_stale: a batch serves fresh values only
    assert pipeline.get_batch(Reading, queries) == [Reading(1, "v2"), Reading(2, "v2")]
    assert source.calls == 4
    fake_clock.advance(59)  # the memory tier kept them ttl + max_stale after the last write
    assert memory.lookup(Reading, {"id": 1}) is not MISSING
    fake_clock.advance(2)
    assert memory.lookup(Reading, {"id": 1}) is MISSING


def test_the_negative_cache_is_bounded(fake_clock: FakeClock) -> None:
    source = CountingSource()
    source.missing = set(range(10))
    pipeline = DataPipeline(
        [MemoryStore(clock=fake_clock), source],
        policies={Reading: Policy(negative_ttl=60)},
        negative_cache_size=3,
        clock=fake_clock,
    )
    for n in range(10):
        with pytest.raises(NotFoundError):
            pipeline.get(Reading, {"id": n})
    assert source.calls == 10
    for n in (7, 8, 9):  # the three most recent misses are remembered
        with pytest.raises(NotFoundError, match="negative cache"):
            pipeline.get(Reading, {"id": n})
    assert source.calls == 10
    with pytest.raises(NotFoundError):
        pipeline.get(Reading, {"id": 0})  # forgotten: asked again
    assert source.calls == 11
