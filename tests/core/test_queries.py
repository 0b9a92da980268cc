"""The 1.x query DSL: Query.has / can_have / as_ / or_ / and_ / also / with_default, validate_query."""

from __future__ import annotations

import enum
from typing import Any

import pytest

from datapipelines import (
    BoundKeyExistenceError,
    DataPipeline,
    DataSource,
    MissingKeyError,
    PipelineContext,
    Query,
    QueryValidationError,
    QueryValidatorStructureError,
    WrongValueTypeError,
    validate_query,
)


class Region(enum.Enum):
    EUW = "EUW"
    NA = "NA"


def test_has_requires_the_key_and_as_checks_its_type() -> None:
    validator = Query.has("id").as_(int)
    assert validator({"id": 3}) is True
    with pytest.raises(MissingKeyError, match="'id'"):
        validator({"name": "x"})
    with pytest.raises(WrongValueTypeError) as error:
        validator({"id": "3"})
    message = str(error.value)
    assert "'id'" in message and "int" in message and "str" in message


def test_validation_errors_are_query_validation_errors_and_value_errors() -> None:
    for error_class in (MissingKeyError, WrongValueTypeError, BoundKeyExistenceError):
        assert issubclass(error_class, QueryValidationError)
    assert issubclass(QueryValidationError, ValueError)
    assert issubclass(QueryValidatorStructureError, AttributeError), "1.x base"


def test_can_have_allows_absence_but_checks_a_present_value() -> None:
    validator = Query.can_have("page").as_(int)
    assert validator({})
    assert validator({"page": 2})
    with pytest.raises(WrongValueTypeError):
        validator({"page": 2.5})


def test_or_needs_one_of_the_keys_and_as_applies_to_the_last_key() -> None:
    validator = Query.has("id").as_(int).or_("name").as_(str)
    assert validator({"id": 1})
    assert validator({"name": "ann"})
    with pytest.raises(WrongValueTypeError, match="'name'"):
        validator({"name": 5})
    with pytest.raises(MissingKeyError) as error:
        validator({"other": 1})
    assert "id" in str(error.value) and "name" in str(error.value)


def test_has_and_requires_every_key() -> None:
    validator = Query.has("a").and_("b")
    assert validator({"a": 1, "b": 2})
    with pytest.raises(MissingKeyError, match="'b'"):
        validator({"a": 1})


def test_can_have_and_means_all_or_none() -> None:
    validator = Query.can_have("start").as_(int).and_("end").as_(int)
    assert validator({})
    assert validator({"start": 1, "end": 2})
    with pytest.raises(BoundKeyExistenceError):
        validator({"start": 1})
    with pytest.raises(BoundKeyExistenceError):
        validator({"end": 1})


def test_and_after_or_binds_to_the_alternative_just_named() -> None:
    # can_have("test").or_("cat").and_("dog") reads: test, or else cat and dog together.
    validator = Query.can_have("test").or_("cat").and_("dog")
    assert validator({})
    assert validator({"test": 1})
    assert validator({"cat": 1, "dog": 2})
    for half in ({"dog": 2}, {"cat": 1}):
        with pytest.raises(QueryValidationError, match="cat and dog"):
            validator(half)


# How datapipelines 1.0.7 answers every subset of the keys a-d, recorded by running it:
# "." accepted, "M" MissingKeyError, "B" BoundKeyExistenceError; subsets in SUBSETS order.
SUBSETS = ["", "a", "ab", "abc", "abcd", "abd", "ac", "acd", "ad", "b", "bc", "bcd", "bd", "c", "cd", "d"]
AS_1X_ANSWERS = [
    ("can_have(a).and_(b).and_(c).or_(d)", ".BB...BBBBBBBBBB"),
    ("can_have(a).and_(b).or_(c)", ".B......BBBBBBB."),
    ("can_have(a).and_(b).or_(c).and_(d)", "B.....B.BBBBBBBB"),
    ("can_have(a).or_(b).also.can_have(c).and_(d)", "...B.BB.B.B.BB.B"),
    ("can_have(a).or_(b).and_(c)", ".........B..BBB."),
    ("can_have(a).or_(b).and_(c).and_(d)", ".........BB.BBBB"),
    ("can_have(a).or_(b).and_(c).or_(d)", ".........B...BBB"),
    ("can_have(a).or_(b).or_(c).and_(d)", ".............B.B"),
    ("has(a).also.can_have(b).or_(c).and_(d)", "M.....B.BMMMMMMM"),
    ("has(a).and_(b).and_(c).or_(d)", "MMM...MMMMMMMMMM"),
    ("has(a).and_(b).or_(c)", "MM......MMMMMMMM"),
    ("has(a).and_(b).or_(c).and_(d)", "MM....M.MMMMMMMM"),
    ("has(a).or_(b).also.has(c)", "MMM..M..MM..MMMM"),
    ("has(a).or_(b).and_(c)", "M........M..MMMM"),
    ("has(a).or_(b).and_(c).or_(d)", "M........M...MMM"),
    ("has(a).or_(b).or_(c).and_(d)", "M............M.M"),
]
OUTCOMES = {".": None, "M": MissingKeyError, "B": BoundKeyExistenceError}


def _build(chain: str) -> Any:
    """Query.<chain>, where chain is e.g. "has(a).or_(b).also.has(c)"."""
    validator: Any = Query
    for step in chain.split("."):
        if step == "also":
            validator = validator.also
        else:
            verb, key = step.rstrip(")").split("(")
            validator = getattr(validator, verb)(key)
    return validator


@pytest.mark.parametrize(("chain", "answers"), AS_1X_ANSWERS)
def test_and_or_also_combinations_answer_as_1x_does(chain: str, answers: str) -> None:
    validator = _build(chain)
    for keys, answer in zip(SUBSETS, answers, strict=True):
        expected = OUTCOMES[answer]
        query = dict.fromkeys(keys, 1)
        if expected is None:
            assert validator(query), (chain, keys)
        else:
            with pytest.raises(expected):
                validator(query)


# Types and defaults inside and/or/also chains, with 1.0.7's answers (where 1.0.7 raised a
# bare ValueError or TypeError from its own error message, the answer is WrongValueTypeError).
TYPED_AS_1X = [
    (lambda: Query.can_have("a").with_default(5).also.has("b"), {"b": "x"}, {"a": 5, "b": "x"}),
    (lambda: Query.can_have("a").with_default(5).also.has("b"), {"a": "x", "b": 1}, WrongValueTypeError),
    (lambda: Query.can_have("a").with_default(5).also.has("b"), {"a": 1}, MissingKeyError),
    (lambda: Query.has("b").also.can_have("a").with_default(5).or_("c"), {"b": 1}, {"a": 5, "b": 1}),
    (
        lambda: Query.has("b").also.can_have("a").with_default(5).or_("c"),
        {"b": 1, "c": "x"},
        {"a": 5, "b": 1, "c": "x"},
    ),
    (lambda: Query.can_have("a").with_default(lambda q, c: 7, supplies_type=int).and_("b"), {}, {"a": 7}),
    (
        lambda: Query.can_have("a").with_default(lambda q, c: 7, supplies_type=int).and_("b"),
        {"b": 1},
        BoundKeyExistenceError,
    ),
    (lambda: Query.has("a").as_any_of([int, str]).or_("b").and_("c").as_(int), {"a": "x"}, {"a": "x"}),
    (
        lambda: Query.has("a").as_any_of([int, str]).or_("b").and_("c").as_(int),
        {"b": 1, "c": 1},
        {"b": 1, "c": 1},
    ),
    (
        lambda: Query.has("a").as_any_of([int, str]).or_("b").and_("c").as_(int),
        {"b": 1, "c": "x"},
        WrongValueTypeError,
    ),
    (lambda: Query.has("a").as_any_of([int, str]).or_("b").and_("c").as_(int), {"b": 1}, MissingKeyError),
    (lambda: Query.can_have("r").as_(Region).or_("b").as_(int), {"r": "EUW"}, {"r": Region.EUW}),
    (lambda: Query.can_have("r").as_(Region).or_("b").as_(int), {"r": 1}, WrongValueTypeError),
    (lambda: Query.can_have("r").as_(Region).or_("b").as_(int), {"b": "x"}, WrongValueTypeError),
    (lambda: Query.can_have("r").as_(Region).or_("b").as_(int), {}, {}),
    (
        lambda: Query.has("a").or_("b").as_(int).also.can_have("c").as_(str).and_("d"),
        {"a": 1, "c": "x"},
        BoundKeyExistenceError,
    ),
    (
        lambda: Query.has("a").or_("b").as_(int).also.can_have("c").as_(str).and_("d"),
        {"b": "x"},
        WrongValueTypeError,
    ),
]


@pytest.mark.parametrize(("build", "query", "expected"), TYPED_AS_1X)
def test_types_and_defaults_in_and_or_also_chains_answer_as_1x_does(
    build: Any, query: Any, expected: Any
) -> None:
    validator, query = build(), dict(query)
    if isinstance(expected, dict):
        assert validator(query) and query == expected
    else:
        with pytest.raises(expected):
            validator(query)


def test_also_starts_an_independent_rule() -> None:
    validator = Query.has("id").as_(int).also.can_have("region").as_(Region).also.has("kind")
    assert validator({"id": 1, "kind": "x"})
    with pytest.raises(MissingKeyError, match="'kind'"):
        validator({"id": 1})
    with pytest.raises(WrongValueTypeError):
        validator({"id": 1, "kind": "x", "region": 4})


def test_as_any_of_accepts_any_listed_type() -> None:
    validator = Query.has("v").as_any_of([int, str])
    assert validator({"v": 1}) and validator({"v": "1"})
    with pytest.raises(WrongValueTypeError):
        validator({"v": 1.5})


def test_generic_aliases_check_as_their_origin() -> None:
    validator = Query.has("ids").as_(list[int])
    assert validator({"ids": [1, 2]})
    with pytest.raises(WrongValueTypeError):
        validator({"ids": (1, 2)})


def test_enum_values_are_coerced_from_str() -> None:
    validator = Query.has("region").as_(Region)
    query: dict[str, Any] = {"region": "EUW"}
    validator(query)
    assert query["region"] is Region.EUW
    query = {"region": Region.NA}
    validator(query)
    assert query["region"] is Region.NA
    with pytest.raises(WrongValueTypeError) as error:
        validator({"region": "Mars"})
    assert not isinstance(error.value, TypeError)


def test_enum_coercion_falls_back_to_the_next_type() -> None:
    validator = Query.has("region").as_any_of([Region, str])
    query: dict[str, Any] = {"region": "Mars"}
    validator(query)
    assert query["region"] == "Mars"


def test_with_default_fills_a_missing_key_with_a_fresh_copy() -> None:
    validator = Query.can_have("tags").with_default(["a"])
    first: dict[str, Any] = {}
    second: dict[str, Any] = {}
    validator(first)
    validator(second)
    assert first == {"tags": ["a"]} and second == {"tags": ["a"]}
    first["tags"].append("b")
    assert second["tags"] == ["a"], "defaults must not be shared between queries"
    present = {"tags": ["z"]}
    validator(present)
    assert present == {"tags": ["z"]}
    with pytest.raises(WrongValueTypeError):
        validator({"tags": "z"})


def test_with_default_callable_gets_query_and_context() -> None:
    seen: list[tuple[Any, Any]] = []

    def platform(query: Any, context: Any) -> str:
        seen.append((dict(query), context))
        return query["region"].lower()

    validator = Query.has("region").as_(str).also.can_have("platform")
    validator = validator.with_default(platform, supplies_type=str)
    query: dict[str, Any] = {"region": "EUW"}
    context = PipelineContext()
    validator(query, context)
    assert query["platform"] == "euw"
    assert seen == [({"region": "EUW"}, context)]
    with pytest.raises(WrongValueTypeError):
        validator({"region": "EUW", "platform": 3})


def test_with_default_after_as_keeps_the_declared_type() -> None:
    validator = Query.can_have("n").as_any_of([int, float]).with_default(0)
    query: dict[str, Any] = {}
    validator(query)
    assert query == {"n": 0}
    assert validator({"n": 1.5})


@pytest.mark.parametrize(
    "build",
    [
        lambda: Query.has("a").has("b"),
        lambda: Query.has("a").can_have("b"),
        lambda: Query.has("a").also.as_(int),
        lambda: Query.has("a").also.also,
        lambda: Query.has("a").also.or_("b"),
        lambda: Query.has("a").also.and_("b"),
        lambda: Query.has("a").as_(int).as_(str),
        lambda: Query.has("a").with_default(1),
        lambda: Query.has("a").as_(5),
        lambda: Query.has("a").as_any_of([int, "str"]),
    ],
    ids=[
        "has-has",
        "has-can_have",
        "also-as",
        "also-also",
        "also-or",
        "also-and",
        "as-as",
        "has-default",
        "as-not-a-type",
        "as_any_of-not-a-type",
    ],
)
def test_malformed_validators_raise_structure_errors_when_built(build: Any) -> None:
    with pytest.raises(QueryValidatorStructureError):
        build()


# -- validate_query on handlers ---------------------------------------------------


class Item:
    def __init__(self, query: dict[str, Any]) -> None:
        self.query = query


def upper_region(query: Any) -> None:
    if isinstance(query.get("region"), str):
        query["region"] = query["region"].upper()


def mark(query: Any) -> None:
    query.setdefault("order", []).append("mark")


VALIDATOR = Query.has("id").as_(int).also.can_have("region").as_(Region).also.can_have("page").with_default(1)


class Items(DataSource):
    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @get.register(Item)
    @validate_query(VALIDATOR, upper_region, mark)
    def get_item(self, query: Any, context: Any = None) -> Item:
        return Item(dict(query))

    @get_many.register(Item)
    @validate_query(VALIDATOR, upper_region)
    def get_items(self, query: Any, context: Any = None) -> list[Item]:
        return [Item(dict(query))]


class SingleItems(DataSource):
    """Items without a get_many handler: get_batch asks it query by query."""

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @get.register(Item)
    @validate_query(VALIDATOR, upper_region)
    def get_item(self, query: Any, context: Any = None) -> Item:
        return Item(dict(query))


def test_validate_query_runs_pre_transforms_in_order_then_validates() -> None:
    item = Items().get(Item, {"id": 1, "region": "euw"})
    assert item.query == {"id": 1, "region": Region.EUW, "page": 1, "order": ["mark"]}


def test_validate_query_raises_the_1x_error_classes() -> None:
    with pytest.raises(WrongValueTypeError):
        Items().get(Item, {"id": "1"})
    with pytest.raises(MissingKeyError):
        Items().get(Item, {"region": "EUW"})


def test_validation_errors_reach_the_pipeline_caller_unchanged() -> None:
    pipeline = DataPipeline([Items()])
    with pytest.raises(WrongValueTypeError):
        pipeline.get(Item, {"id": "not an int"})
    with pytest.raises(MissingKeyError):
        pipeline.get_many(Item, {"page": 2})


def test_handler_query_changes_do_not_leak_into_the_callers_query() -> None:
    pipeline = DataPipeline([Items()])
    query = {"id": 1, "region": "euw"}
    item = pipeline.get(Item, query)
    assert item.query["page"] == 1 and item.query["region"] is Region.EUW
    assert query == {"id": 1, "region": "euw"}
    items = pipeline.get_many(Item, query)
    assert items[0].query["page"] == 1
    assert query == {"id": 1, "region": "euw"}
    streamed = list(pipeline.get_many(Item, query, streaming=True))
    assert streamed[0].query["region"] is Region.EUW
    assert query == {"id": 1, "region": "euw"}
    queries = [{"id": 1}, {"id": 2, "region": "na"}]
    batch = DataPipeline([SingleItems()]).get_batch(Item, queries)
    assert [b.query["page"] for b in batch] == [1, 1]
    assert queries == [{"id": 1}, {"id": 2, "region": "na"}]
