"""Tier: one element's guarded I/O counts, trips its breaker, logs and honours strict in one place."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from datapipelines import MISSING, DataPipeline, DataSource, NotFoundError, Store
from datapipelines.breaker import NO_BREAKER, CircuitBreaker
from datapipelines.errors import DamagedEntryError
from datapipelines.sinks import MemoryStore
from datapipelines.stats import ElementStats
from datapipelines.tier import Action, Tier
from tests.support.clock import FakeClock


@dataclass(frozen=True)
class Reading:
    id: int


Q = {"id": 1}


class FlakyStore(Store):
    """A dict-backed keyed store that raises ``failure`` from every call while it is set."""

    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, Any] = {}
        self.failure: Exception | None = None
        self.calls = 0

    def _enter(self) -> None:
        self.calls += 1
        if self.failure is not None:
            raise self.failure

    def _load(self, key: str, type_: Any) -> Any:
        self._enter()
        return self.data.get(key, MISSING)

    def _load_entry(self, key: str, type_: Any) -> Any:
        value = self._load(key, type_)
        return MISSING if value is MISSING else (value, 10.0)

    def _save_many(self, entries: Sequence[tuple[str, Any]], seconds: float | None, type_: Any) -> None:
        self._enter()
        self.data.update(entries)

    def _delete_many(self, keys: Sequence[str]) -> int:
        self._enter()
        return sum(self.data.pop(key, MISSING) is not MISSING for key in keys)

    def clear(self) -> None:
        self.data.clear()


class DamagedTier:
    """A tier that tells ages, whose every entry fails its integrity check."""

    def lookup_entry(self, type: Any, query: Mapping[str, Any]) -> Any:
        raise DamagedEntryError("bad signature")


def tier_of(element: Any, *, strict: bool = False, breaker: Any = NO_BREAKER, **traits: Any) -> Tier:
    stats = ElementStats("flaky")
    return Tier(element, stats, breaker, strict=strict, new_context=lambda q: {"query": q}, **traits)


def keyed(store: Store, **options: Any) -> Tier:
    return tier_of(store, keyed=True, cached=True, aged=True, **options)


def hits(tier: Tier) -> int:
    return int(tier.stats.snapshot()["hits"])


def test_actions_tell_writes_from_lookups_and_name_themselves_as_logged() -> None:
    assert [a.writes for a in Action] == [False, False, True, True]
    assert [a.value for a in Action] == ["lookup", "batch lookup", "write-back", "invalidate"]


def test_a_lookup_counts_its_outcome_hit_or_miss() -> None:
    store = FlakyStore()
    tier = keyed(store)
    assert tier.lookup_entry(Reading, Q) is MISSING
    store.store_many(Reading, [(Q, Reading(1))])
    assert tier.lookup_entry(Reading, Q) == (Reading(1), 10.0)
    snapshot = tier.stats.snapshot()
    assert (snapshot["hits"], snapshot["misses"], snapshot["errors"]) == (1, 1, 0)
    assert snapshot["p50_us"] is not None  # each lookup is timed


def test_a_failing_lookup_is_counted_logged_and_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    store.failure = OSError("disk gone")
    tier = keyed(store)
    with caplog.at_level(logging.WARNING, logger="datapipelines.tier"):
        assert tier.lookup_entry(Reading, Q) is None
    assert tier.stats.lookup_errors == 1 and tier.stats.lookups == 1 and hits(tier) == 0
    assert "Cache tier flaky failed on lookup, skipped: OSError('disk gone')" in caplog.text


def test_strict_raises_the_tiers_own_error_after_counting_it() -> None:
    store = FlakyStore()
    store.failure = OSError("disk gone")
    tier = keyed(store, strict=True)
    with pytest.raises(OSError, match="disk gone"):
        tier.lookup_entry(Reading, Q)
    with pytest.raises(OSError, match="disk gone"):
        tier.write(lambda value, context: store.put(Reading, value, context), Reading(1), {"query": Q})
    assert (tier.stats.lookup_errors, tier.stats.put_errors) == (1, 1)


def test_a_query_the_tier_cannot_key_is_the_callers_error_and_not_counted() -> None:
    tier = keyed(FlakyStore())
    with pytest.raises(TypeError):
        tier.lookup_entry(Reading, {"id": object()})
    assert tier.stats.lookups == 0 and tier.stats.lookup_errors == 0


def test_a_damaged_entry_is_a_counted_miss() -> None:
    tier = tier_of(DamagedTier(), cached=True, aged=True)
    assert tier.lookup_entry(Reading, Q) is MISSING
    assert tier.lookup_many(Reading, [Q, Q], float("inf")) == [MISSING, MISSING]
    assert tier.stats.damaged == 3 and tier.stats.misses == 3


def test_an_open_breaker_skips_the_element_and_counts_skips(fake_clock: FakeClock) -> None:
    store = FlakyStore()
    store.failure = ConnectionError("refused")
    tier = keyed(store, breaker=CircuitBreaker(failures=2, cooldown=5, clock=fake_clock))
    assert tier.lookup_entry(Reading, Q) is None
    assert tier.lookup_many(Reading, [Q, Q], float("inf")) is None  # two errors: the breaker opens
    calls = store.calls
    assert tier.lookup_entry(Reading, Q) is None
    tier.write(lambda value, context: store.put(Reading, value, context), Reading(1), {"query": Q})
    assert tier.delete(Reading, Q) is None
    assert store.calls == calls  # not asked at all while open
    snapshot = tier.stats.snapshot()
    assert (snapshot["errors"], snapshot["skips"], snapshot["hits"]) == (3, 3, 0)
    assert tier.breaker.state == "open"
    store.failure = None
    fake_clock.advance(5)
    assert tier.lookup_entry(Reading, Q) is MISSING  # the probe succeeds and closes it
    assert tier.breaker.state == "closed"


def test_writes_count_puts_or_put_errors_and_never_touch_hits() -> None:
    store = FlakyStore()
    tier = keyed(store)
    tier.write_many(Reading, [(Q, Reading(1)), ({"id": 2}, Reading(2))])
    assert store.lookup(Reading, {"id": 2}) == Reading(2)
    store.failure = OSError("full")
    tier.write_many(Reading, [(Q, Reading(3))])
    assert (tier.stats.puts, tier.stats.put_errors, tier.stats.lookups) == (1, 1, 0)


def test_a_tier_passed_in_this_call_is_not_written_back() -> None:
    store = FlakyStore()
    tier = keyed(store)
    tier.write_many(Reading, [(Q, Reading(1))], passed={id(store)})
    assert store.calls == 0 and tier.stats.put_skips == 1 and tier.stats.puts == 0


def test_delete_says_how_many_went_or_none_when_it_failed(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    tier = keyed(store)
    store.store_many(Reading, [(Q, Reading(1))])
    assert tier.delete(Reading, Q) == 1
    assert tier.delete(Reading, Q) == 0
    store.failure = OSError("gone")
    with caplog.at_level(logging.WARNING, logger="datapipelines.tier"):
        assert tier.delete(Reading, Q) is None
    assert "failed on invalidate" in caplog.text and tier.stats.put_errors == 1


def test_a_batch_lookup_counts_every_query_and_serves_fresh_values_only() -> None:
    store = FlakyStore()
    tier = keyed(store)
    store.store_many(Reading, [(Q, Reading(1))])  # ten seconds old, as FlakyStore tells it
    assert tier.lookup_many(Reading, [Q, {"id": 2}], float("inf")) == [Reading(1), MISSING]
    assert tier.lookup_many(Reading, [Q], 5.0) == [MISSING]
    assert (tier.stats.lookups, tier.stats.misses, hits(tier)) == (3, 2, 1)
    store.failure = OSError("gone")
    assert tier.lookup_many(Reading, [Q, Q, Q], float("inf")) is None
    assert (tier.stats.lookups, tier.stats.lookup_errors, hits(tier)) == (6, 3, 1)


class Api(DataSource):
    def __init__(self) -> None:
        self.failure: Exception | None = None

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @get.register(Reading)
    def get_reading(self, query: Any, context: Any = None) -> Reading:
        if self.failure is not None:
            raise self.failure
        if query["id"] < 0:
            raise NotFoundError()
        return Reading(query["id"])


def test_a_source_fetch_counts_calls_misses_and_errors_and_raises_its_errors() -> None:
    api = Api()
    tier = tier_of(api)
    assert tier.fetch(Reading, Q, None) == Reading(1)
    assert tier.fetch(Reading, {"id": -1}, None) is MISSING
    api.failure = RuntimeError("500")
    with pytest.raises(RuntimeError, match="500"):
        tier.fetch(Reading, Q, None)
    with pytest.raises(RuntimeError, match="500"):
        tier.fetch_many(Reading, [{"id": 2}])
    api.failure = None
    assert tier.fetch_many(Reading, [{"id": 2}, {"id": -2}]) == [Reading(2), MISSING]
    stats = tier.stats
    # A batch is one call, its misses are not counted one by one (the batch read counts them).
    assert (stats.calls, stats.misses, stats.lookup_errors) == (5, 1, 1)
    assert stats.snapshot()["p99_us"] is not None


def test_a_tier_counted_per_type_shares_the_breaker_not_the_counters() -> None:
    store = FlakyStore()
    tier = keyed(store, breaker=CircuitBreaker(failures=1))
    typed = tier.counted_in(ElementStats("flaky"))
    store.failure = OSError("gone")
    assert typed.lookup_entry(Reading, Q) is None
    assert typed.stats.lookup_errors == 1 and tier.stats.lookup_errors == 0
    assert tier.lookup_entry(Reading, Q) is None  # the breaker both share is open
    assert tier.stats.lookup_skips == 1


def test_the_pipeline_builds_one_tier_per_element_and_its_routes_refer_to_them() -> None:
    memory, api = MemoryStore(), Api()
    pipeline = DataPipeline([memory, api])
    route_memory, route_api = pipeline.routes(Reading)
    assert route_memory.tier.element is memory and route_api.tier.element is api
    assert route_api.after[0].tier is route_memory.tier  # the write-back into memory
    assert (route_memory.tier.keyed, route_memory.tier.in_process) == (True, True)
    assert not route_api.tier.cached
    with pytest.raises(AttributeError):
        route_memory.max_age = 3  # type: ignore[misc]  # plans are immutable
