"""Code written against datapipelines 1.x (1.0.7) imports and runs unchanged: the names, the
module paths and the context keys it used. The README's "Coming from datapipelines 1.x"
section points here and at the tests it names."""

from __future__ import annotations

import enum
import importlib
import typing
from typing import Any

import pytest

import datapipelines
from datapipelines import DataPipeline, DataSource, PipelineContext, Query
from datapipelines.queries import WrongValueTypeError

# datapipelines 1.0.7's __all__, and where each of its modules kept what.
ALL_1X = [
    "DataTransformer",
    "CompositeDataTransformer",
    "DataPipeline",
    "NoConversionError",
    "Query",
    "QueryValidationError",
    "QueryValidatorStructureError",
    "validate_query",
    "DataSource",
    "CompositeDataSource",
    "DataSink",
    "CompositeDataSink",
    "PipelineContext",
    "UnsupportedError",
    "NotFoundError",
    "TYPE_WILDCARD",
]
MODULES_1X = {
    "datapipelines.common": ["PipelineContext", "UnsupportedError", "NotFoundError", "TYPE_WILDCARD"],
    "datapipelines.pipelines": ["DataPipeline", "NoConversionError"],
    "datapipelines.sources": ["DataSource", "CompositeDataSource"],
    "datapipelines.sinks": ["DataSink", "CompositeDataSink"],
    "datapipelines.transformers": ["DataTransformer", "CompositeDataTransformer"],
    "datapipelines.queries": [
        "Query",
        "QueryValidator",
        "QueryValidationError",
        "MissingKeyError",
        "WrongValueTypeError",
        "BoundKeyExistenceError",
        "QueryValidatorStructureError",
        "validate_query",
    ],
}


def test_every_name_1x_exported_is_importable_from_datapipelines() -> None:
    missing = [name for name in ALL_1X if not hasattr(datapipelines, name)]
    assert not missing
    assert set(ALL_1X) <= set(datapipelines.__all__)


@pytest.mark.parametrize(("module", "names"), sorted(MODULES_1X.items()))
def test_the_1x_module_paths_still_import_the_same_objects(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    for name in names:
        public = getattr(datapipelines, name, None) or getattr(datapipelines.queries, name)
        assert getattr(imported, name) is public, f"{module}.{name}"


def test_the_errors_keep_their_1x_bases() -> None:
    for name in ("NotFoundError", "UnsupportedError", "NoConversionError", "QueryValidationError"):
        assert issubclass(getattr(datapipelines, name), ValueError), name
    assert issubclass(datapipelines.QueryValidatorStructureError, AttributeError)


def test_the_1x_context_keys_keep_their_values() -> None:
    assert PipelineContext.Keys.PIPELINE == "pipeline"
    assert PipelineContext.Keys.EXPIRATION == "expires"
    assert isinstance(PipelineContext(), dict)


def test_type_wildcard_is_its_own_object_not_typing_any() -> None:
    # 1.x's TYPE_WILDCARD was typing.Any; code that compares with TYPE_WILDCARD keeps working,
    # code that wrote typing.Any for it does not.
    class Anything(DataSource):
        def get(self, type: Any, query: Any, context: Any = None) -> Any:
            return None

        def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
            return []

    provided = Anything().provides
    assert provided is datapipelines.TYPE_WILDCARD and datapipelines.TYPE_WILDCARD in provided
    assert datapipelines.TYPE_WILDCARD is not typing.Any


class Region(enum.Enum):
    EUW = "EUW"


@pytest.mark.parametrize(
    ("validator", "query"),
    [
        (Query.has("id").as_(int), {"id": "abc"}),
        (Query.has("id").as_(int), {"id": None}),
        (Query.has("region").as_(Region), {"region": "Mars"}),
    ],
)
def test_a_wrong_query_value_is_always_a_wrong_value_type_error(
    validator: Any, query: dict[str, Any]
) -> None:
    # 1.0.7 raised a bare ValueError or TypeError from int("abc"), int(None), Region("Mars") here.
    with pytest.raises(WrongValueTypeError):
        validator(query)


class Echo(DataSource):
    """A wildcard source that adds a key and appends to a nested list of the query it is handed."""

    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        query["added"] = True
        query["nested"].append("touched")
        return "echo"

    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        return [self.get(type, query, context)]


def test_the_pipeline_copies_the_query_shallowly_for_each_source() -> None:
    query: dict[str, Any] = {"name": "x", "nested": []}
    assert DataPipeline([Echo()]).get(str, query) == "echo"
    assert "added" not in query  # a new or replaced key stays with the source
    assert query["nested"] == ["touched"]  # an in-place change to a nested value does not (1.x deep-copied)
