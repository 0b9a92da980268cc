"""Deterministic query keys: datapipelines.keys.key_for and compute_key."""

from __future__ import annotations

import datetime
import enum
import itertools
import os
import re
import subprocess
import sys

import pytest

from datapipelines import key_for, set_schema_version
from datapipelines.keys import compute_key


def fresh_type(name: str = "Thing", **attributes: object) -> type:
    """A new class per test, so memoised keys of other tests never answer for it."""
    return type(name, (), dict(attributes))


class Colour(enum.Enum):
    RED = "red"


class Region(str, enum.Enum):
    EUW = "EUW"


class Level(enum.IntEnum):
    ONE = 1


class Name(str):
    pass


def test_key_names_type_schema_version_and_a_hash() -> None:
    Thing = fresh_type()
    key = key_for(Thing, {"id": 1})
    assert re.fullmatch(rf"{re.escape(__name__)}\.Thing:v1:[0-9a-f]{{32}}", key), key
    assert key_for("Match", {"id": 1}).startswith("Match:v1:")


def test_equal_queries_give_equal_keys_whatever_the_dict_order() -> None:
    Thing = fresh_type()
    assert key_for(Thing, {"a": 1, "b": "x"}) == key_for(Thing, {"b": "x", "a": 1})
    nested_1 = {"outer": {"x": [1, 2], "y": {"p": None, "q": b"z"}}, "k": 2}
    nested_2 = {"k": 2, "outer": {"y": {"q": b"z", "p": None}, "x": [1, 2]}}
    assert key_for(Thing, nested_1) == key_for(Thing, nested_2)


def test_different_queries_or_types_give_different_keys() -> None:
    Thing, Other = fresh_type("Thing"), fresh_type("Other")
    assert key_for(Thing, {"a": 1}) != key_for(Thing, {"a": 2})
    assert key_for(Thing, {"a": 1}) != key_for(Thing, {"b": 1})
    assert key_for(Thing, {"a": 1}) != key_for(Other, {"a": 1})
    assert key_for(Thing, {"a": [1, 2]}) != key_for(Thing, {"a": [2, 1]})
    assert key_for(Thing, {"a": [1, 2]}) != key_for(Thing, {"a": (1, 2)})
    assert key_for(Thing, {"a": "x", "b": "y"}) != key_for(Thing, {"a": "xb", "": "y"})


SCALARS = [1, 1.0, "1", True]


@pytest.mark.parametrize("first, second", list(itertools.permutations(SCALARS, 2)))
def test_one_one_point_zero_string_one_and_true_never_share_a_key(first: object, second: object) -> None:
    Thing = fresh_type()
    # The second lookup comes after a memoised lookup of an equal-comparing value.
    key_first = key_for(Thing, {"v": first})
    key_second = key_for(Thing, {"v": second})
    assert key_first != key_second
    assert key_second == compute_key(Thing, {"v": second})
    for wrap in (lambda v: [v], lambda v: (v,), lambda v: {"inner": v}, lambda v: [(v, "x")]):
        assert key_for(Thing, {"v": wrap(first)}) != key_for(Thing, {"v": wrap(second)})


def test_all_four_scalars_give_four_keys() -> None:
    Thing = fresh_type()
    assert len({key_for(Thing, {"v": value}) for value in SCALARS}) == 4
    assert len({key_for(Thing, {"v": [value]}) for value in SCALARS}) == 4
    assert len({key_for(Thing, {"v": (value, value)}) for value in SCALARS}) == 4


@pytest.mark.parametrize(
    "plain, special",
    [
        ({"region": "EUW"}, {"region": Region.EUW}),
        ({"region": "EUW"}, {"region": Name("EUW")}),
        ({"level": 1}, {"level": Level.ONE}),
        ({"region": 1}, {Region.EUW: 1}),
        ({"EUW": 1}, {Region.EUW: 1}),
        ({"EUW": "x"}, {Name("EUW"): "x"}),
        ({"x": 0.0}, {"x": -0.0}),
    ],
    ids=[
        "str-enum-value",
        "str-subclass-value",
        "int-enum-value",
        "unrelated",
        "str-enum-key",
        "str-subclass-key",
        "negative-zero",
    ],
)
def test_key_does_not_depend_on_what_was_looked_up_before(plain: dict, special: dict) -> None:
    """A memoised key of an equal-comparing query never answers for another query."""
    Thing = fresh_type()
    expected = compute_key(Thing, special)
    key_for(Thing, plain)
    assert key_for(Thing, special) == expected
    assert compute_key(Thing, plain) == key_for(Thing, plain)


def test_negative_zero_equals_zero() -> None:
    Thing = fresh_type()
    assert {"x": -0.0} == {"x": 0.0}
    assert compute_key(Thing, {"x": -0.0}) == compute_key(Thing, {"x": 0.0})
    assert compute_key(Thing, {"x": [-0.0]}) == compute_key(Thing, {"x": [0.0]})


def test_enum_values_differ_from_their_plain_values() -> None:
    Thing = fresh_type()
    assert key_for(Thing, {"c": Colour.RED}) != key_for(Thing, {"c": "red"})
    assert key_for(Thing, {"c": Level.ONE}) != key_for(Thing, {"c": 1})
    assert key_for(Thing, {"c": Colour.RED}) == key_for(Thing, {"c": Colour("red")})


def test_nested_lists_tuples_sets_and_dicts() -> None:
    Thing = fresh_type()
    query = {
        "ids": [1, 2, (3, 4)],
        "tags": {"b", "a", "c"},
        "frozen": frozenset({3, 1, 2}),
        "filter": {"since": datetime.date(2024, 1, 2), "names": ["x", {"deep": (None, b"\x00")}]},
    }
    key = key_for(Thing, query)
    same = {
        "filter": {"names": ["x", {"deep": (None, b"\x00")}], "since": datetime.date(2024, 1, 2)},
        "frozen": frozenset([2, 3, 1]),
        "tags": set(["c", "a", "b"]),
        "ids": [1, 2, (3, 4)],
    }
    assert key_for(Thing, same) == key
    assert key_for(Thing, {**query, "tags": {"a", "b"}}) != key


def test_set_order_does_not_matter() -> None:
    Thing = fresh_type()
    members = [f"member-{i}" for i in range(50)]
    forward, backward = set(), set()
    for member in members:
        forward.add(member)
    for member in reversed(members):
        backward.add(member)
    assert key_for(Thing, {"s": forward}) == key_for(Thing, {"s": backward})
    assert key_for(Thing, {"s": {1, "1", 1.5}}) == key_for(Thing, {"s": {1.5, "1", 1}})


def test_unsupported_value_raises_type_error_naming_the_key_path() -> None:
    Thing = fresh_type()
    with pytest.raises(TypeError) as error:
        key_for(Thing, {"outer": {"inner": [1, object()]}})
    message = str(error.value)
    assert "outer.inner[1]" in message
    assert "object" in message
    with pytest.raises(TypeError, match="'top'"):
        key_for(Thing, {"top": object()})


def test_a_query_must_be_a_mapping() -> None:
    with pytest.raises(TypeError, match="mapping"):
        key_for(fresh_type(), [("a", 1)])  # type: ignore[arg-type]


def test_schema_version_attribute_changes_the_key() -> None:
    V1 = fresh_type("Versioned")
    V2 = fresh_type("Versioned", __schema_version__=2)
    assert V1.__qualname__ == V2.__qualname__ and V1.__module__ == V2.__module__
    assert key_for(V1, {"id": 1}) != key_for(V2, {"id": 1})
    assert ":v2:" in key_for(V2, {"id": 1})


def test_set_schema_version_changes_the_key_even_after_memoisation() -> None:
    Thing = fresh_type()
    before = key_for(Thing, {"id": 1})
    set_schema_version(Thing, 7)
    after = key_for(Thing, {"id": 1})
    assert after != before
    assert ":v7:" in after
    set_schema_version("MatchName", 3)
    assert key_for("MatchName", {"id": 1}).startswith("MatchName:v3:")


@pytest.mark.parametrize("bad", [-1, True, 1.5, "2"])
def test_set_schema_version_rejects_bad_versions(bad: object) -> None:
    with pytest.raises(ValueError, match="(?i)schema version"):
        set_schema_version(fresh_type(), bad)  # type: ignore[arg-type]


CROSS_PROCESS_QUERIES = [
    {"id": 1, "name": "x"},
    {"tags": {"a", "b", "c", "d", "e"}, "n": {"z": 1.5, "y": [True, None]}},
    {"f": frozenset({"q", "r", "s"}), "b": b"raw", "when": datetime.date(2024, 5, 6)},
]


def _keys_in_subprocess(hash_seed: str) -> list[str]:
    script = (
        "import datetime\n"
        "from datapipelines.keys import key_for\n"
        f"for q in {CROSS_PROCESS_QUERIES!r}:\n"
        "    print(key_for('Weather', q))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.split()


def test_keys_are_the_same_in_another_process_with_another_hash_seed() -> None:
    here = [key_for("Weather", q) for q in CROSS_PROCESS_QUERIES]
    assert len(set(here)) == len(here)
    assert _keys_in_subprocess("1") == here
    assert _keys_in_subprocess("4242") == here


def test_str_like_query_keys_name_the_same_field_as_the_plain_str() -> None:
    # Keys are field names; values keep their types.
    Thing = fresh_type()
    assert compute_key(Thing, {Region.EUW: 1}) == compute_key(Thing, {"EUW": 1})
    assert compute_key(Thing, {Name("EUW"): 1}) == compute_key(Thing, {"EUW": 1})
    assert compute_key(Thing, {"r": Region.EUW}) != compute_key(Thing, {"r": "EUW"})


def test_nested_queries_are_memoised_without_mixing_types_up() -> None:
    Thing = fresh_type()
    queries = [{"params": {"n": value}} for value in SCALARS]
    queries += [{"params": {"n": [value]}} for value in SCALARS]
    for _ in range(2):  # the second round answers from the memo
        keys = [key_for(Thing, q) for q in queries]
        assert keys == [compute_key(Thing, q) for q in queries]
        assert len(set(keys)) == len(queries)


def test_plain_subclasses_of_str_and_int_key_as_their_base_value() -> None:
    class Count(int):
        pass

    Thing = fresh_type()
    assert compute_key(Thing, {"v": Name("EUW")}) == compute_key(Thing, {"v": "EUW"})
    assert compute_key(Thing, {"v": [Count(3)]}) == compute_key(Thing, {"v": [3]})
    assert key_for(Thing, {"v": [Name("EUW")]}) == key_for(Thing, {"v": ["EUW"]})


def test_queries_with_enums_are_memoised_without_mixing_values_up() -> None:
    Thing = fresh_type()
    utc = datetime.timezone.utc
    plus_one = datetime.timezone(datetime.timedelta(hours=1))
    pairs = [
        ({"r": Region.EUW, "v": (1,)}, {"r": Region.EUW, "v": (True,)}),
        ({"r": Region.EUW, "n": 1}, {"r": Region.EUW, "n": True}),
        ({"r": Region.EUW, "n": Level.ONE}, {"r": Region.EUW, "n": 1}),
        (
            {"at": datetime.datetime(2024, 1, 1, 12, tzinfo=utc)},
            {"at": datetime.datetime(2024, 1, 1, 13, tzinfo=plus_one)},
        ),
    ]
    for first, second in pairs:
        assert first == second  # equal to Python, so a careless memo would mix them up
        key_for(Thing, first)
        assert key_for(Thing, second) == compute_key(Thing, second) != compute_key(Thing, first)
    assert (
        key_for(Thing, {"r": Region.EUW})
        == key_for(Thing, {"r": Region.EUW})
        == compute_key(Thing, {"r": Region.EUW})
    )
