"""Queries a key cannot be made of, and queries too big to remember: clear errors, bounded memory."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from datapipelines import DataPipeline, key_for
from datapipelines.errors import QueryKeyError
from datapipelines.keys import MAX_DEPTH, MEMO_BYTES, compute_key
from datapipelines.sinks import DiskStore, MemoryStore
from tests.core.test_none_results import Sometimes

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def nested(depth: int) -> dict[str, Any]:
    """A query whose containers nest ``depth`` levels, the query itself counting as one."""
    query: dict[str, Any] = {}
    inner = query
    for _ in range(depth - 1):
        inner["a"] = {}
        inner = inner["a"]
    return query


def test_a_query_nested_1000_deep_raises_a_key_error_naming_the_path() -> None:
    with pytest.raises(QueryKeyError, match=rf"deeper than {MAX_DEPTH} levels at 'a\.a\.a") as caught:
        key_for("Thing", nested(1000))
    assert isinstance(caught.value, TypeError) and isinstance(caught.value, ValueError)


def test_nesting_up_to_the_limit_is_keyed_and_one_more_level_is_not() -> None:
    assert key_for("Thing", nested(MAX_DEPTH)) == compute_key("Thing", nested(MAX_DEPTH))
    with pytest.raises(QueryKeyError):
        compute_key("Thing", nested(MAX_DEPTH + 1))


def test_a_list_holding_itself_raises_a_key_error_not_recursion_error() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(QueryKeyError, match=r"at 'ids\[1\]\[1\]\[1\]"):
        key_for("Thing", {"ids": loop})


@pytest.mark.parametrize(
    "query, path",
    [
        ({"name": os.fsdecode(b"report-\xff.csv")}, "name"),
        ({"files": [1, {"path": os.fsdecode(b"\xfe")}]}, "files[1].path"),
        ({os.fsdecode(b"k\xff"): 1}, os.fsdecode(b"k\xff")),
        ({"tags": {("x", "\ud800")}}, "tags{}[1]"),
    ],
    ids=["value", "nested", "key", "in-a-set"],
)
def test_a_lone_surrogate_raises_a_key_error_naming_the_path(query: dict[str, Any], path: str) -> None:
    with pytest.raises(QueryKeyError, match="not valid Unicode") as caught:
        key_for("Thing", query)
    assert repr(path) in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, TypeError)


def test_valid_non_ascii_text_still_keys() -> None:
    assert key_for("Thing", {"city": "Tromsø"}) != key_for("Thing", {"city": "Tromso"})


def test_an_unsupported_value_is_still_a_type_error_naming_its_path() -> None:
    with pytest.raises(TypeError, match=r"at 'filter\.when' has unsupported type builtins\.object"):
        key_for("Thing", {"filter": {"when": object()}})


BAD_QUERIES = [nested(1000), {"name": "\udcff"}, {"x": object()}]


def test_bad_queries_raise_to_their_caller_and_never_open_a_tier_breaker() -> None:
    memory = MemoryStore()
    with tempfile.TemporaryDirectory() as directory, DiskStore(directory) as disk:
        pipeline = DataPipeline([memory, disk, Sometimes()])
        for _ in range(3):
            for query in BAD_QUERIES:
                with pytest.raises(QueryKeyError):
                    pipeline.get(str, query)
                with pytest.raises(QueryKeyError):
                    pipeline.get_batch(str, [{"name": "ok"}, query])
        tiers = pipeline.stats()["tiers"]
        assert [t["breaker"] for t in tiers.values()] == ["closed", "closed"]
        assert [t["errors"] for t in tiers.values()] == [0, 0]
        assert [t["hits"] for t in tiers.values()] == [0, 0]

        # Every other caller still gets the tiers: a miss is written back, then hits memory.
        assert pipeline.get(str, {"name": "good"}) == pipeline.get(str, {"name": "good"}) == "good"
        assert pipeline.stats()["tiers"][repr(memory)]["hits"] == 1
        assert disk.lookup(str, {"name": "good"}) == "good"


def test_the_memo_holds_no_big_queries() -> None:
    big = {"blob": "x" * 256 * 1024}
    key_for("Thing", big)
    from datapipelines import keys

    assert all(len(memo_key[1]) < 4096 for memo_key in keys._memo)
    assert keys._memo.size <= MEMO_BYTES and keys._items_memo.size <= MEMO_BYTES


def test_the_memo_stays_within_its_byte_budget_however_many_queries() -> None:
    from datapipelines import keys

    for number in range(60_000):
        key_for("Thing", {"id": number, "region": "EUW"})
    assert 0 < keys._memo.size <= MEMO_BYTES
    assert len(keys._memo) < 60_000  # it started over at least once
    assert key_for("Thing", {"id": 7, "region": "EUW"}) == compute_key("Thing", {"id": 7, "region": "EUW"})


def test_distinct_big_queries_leave_rss_where_it_was() -> None:
    # The issue's case: 1,000 distinct 256 KiB queries used to add about 240 MiB for good.
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_key_memo.py"), "--case", "big", "--quiet"],
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
    )
    peak_mib, kept_mib = map(float, done.stdout.split())
    assert peak_mib < 32 and kept_mib < 16, done.stdout
