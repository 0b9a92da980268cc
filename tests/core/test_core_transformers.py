"""DataTransformer and CompositeDataTransformer, and how the pipeline chains them."""

from __future__ import annotations

from typing import Any

import pytest

from datapipelines import (
    CompositeDataTransformer,
    DataPipeline,
    DataSink,
    DataSource,
    DataTransformer,
    NoConversionError,
    PipelineContext,
    UnsupportedError,
)


class Raw:
    def __init__(self, text: str) -> None:
        self.text = text


class Parsed:
    def __init__(self, text: str, via: str = "") -> None:
        self.text, self.via = text, via


class Middle1:
    def __init__(self, text: str) -> None:
        self.text = text


class Middle2(Middle1):
    pass


class SpecialParsed(Parsed):
    pass


class RawSubclass(Raw):
    pass


class Parser(DataTransformer):
    def __init__(self) -> None:
        self.contexts: list[Any] = []

    @DataTransformer.dispatch
    def transform(self, target_type: Any, value: Any, context: Any = None) -> Any:
        pass

    @transform.register(Raw, Parsed)
    def raw_to_parsed(self, value: Raw, context: Any = None) -> Parsed:
        self.contexts.append(context)
        return Parsed(value.text, via="parser")

    @transform.register(Parsed, Raw)
    def parsed_to_raw(self, value: Parsed, context: Any = None) -> Raw:
        return Raw(value.text)


def step(from_type: type, to_type: type, cost: int, name: str) -> DataTransformer:
    """A transformer of one conversion with the given cost; it records its name on the value."""

    class Step(DataTransformer):
        @DataTransformer.dispatch
        def transform(self, target_type: Any, value: Any, context: Any = None) -> Any:
            pass

        @transform.register(from_type, to_type)
        def convert(self, value: Any, context: Any = None) -> Any:
            result = to_type(value.text)
            result.via = getattr(value, "via", "") + name
            return result

        @property
        def cost(self) -> int:
            return cost

    return Step()


class RawSource(DataSource):
    def __init__(self) -> None:
        self.asked = 0

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @get.register(Raw)
    def get_raw(self, query: Any, context: Any = None) -> Raw:
        self.asked += 1
        return Raw(query["text"])

    @get_many.register(Raw)
    def get_raws(self, query: Any, context: Any = None) -> list[Raw]:
        return [Raw(t) for t in query["texts"]]


class Recorder(DataSink):
    """A sink of the given types (None: any type) that records (type, value) pairs."""

    def __init__(self, types: Any = None) -> None:
        self.types = types
        self.items: list[tuple[Any, Any]] = []

    @property
    def accepts(self) -> Any:
        return super().accepts if self.types is None else self.types

    @DataSink.dispatch
    def put(self, type: Any, item: Any, context: Any = None) -> None:
        self.items.append((type, item))

    @DataSink.dispatch
    def put_many(self, type: Any, items: Any, context: Any = None) -> None:
        self.items.extend((type, item) for item in items)


# -- DataTransformer --------------------------------------------------------------


def test_transforms_maps_each_from_type_to_its_targets_and_cost_defaults_to_one() -> None:
    parser = Parser()
    assert parser.transforms == {Raw: {Parsed}, Parsed: {Raw}}
    assert parser.cost == 1
    parser.transforms[Raw].add(int)  # type: ignore[attr-defined]
    assert parser.transforms == {Raw: {Parsed}, Parsed: {Raw}}, "transforms must be a copy"


def test_handlers_take_value_and_context() -> None:
    parser = Parser()
    context = PipelineContext()
    parsed = parser.transform(Parsed, Raw("x"), context)
    assert isinstance(parsed, Parsed) and parsed.text == "x"
    assert parser.contexts == [context]
    assert isinstance(parser.transform(Raw, Parsed("y")), Raw)
    assert parser.contexts[-1] is context


def test_a_subclass_value_uses_the_base_conversion() -> None:
    assert Parser().transform(Parsed, RawSubclass("x")).text == "x"


def test_an_unregistered_conversion_raises_unsupported_error_naming_both_types() -> None:
    with pytest.raises(UnsupportedError) as error:
        Parser().transform(int, Raw("x"))
    assert "Raw" in str(error.value) and "int" in str(error.value)
    with pytest.raises(UnsupportedError, match="str"):
        Parser().transform(Parsed, "not raw")


def test_a_subclass_of_a_registered_target_is_not_silently_served_the_base_type() -> None:
    with pytest.raises(UnsupportedError, match="SpecialParsed"):
        Parser().transform(SpecialParsed, Raw("x"))


def test_unsupported_helper_of_1x_names_both_types() -> None:
    error = DataTransformer.unsupported(Parsed, Raw("x"))
    assert isinstance(error, UnsupportedError)
    assert "Raw" in str(error) and "Parsed" in str(error)


# -- CompositeDataTransformer -----------------------------------------------------


def test_composite_transformer_offers_the_union_and_uses_the_cheapest_per_conversion() -> None:
    cheap = step(Raw, Parsed, 1, "cheap")
    dear = step(Raw, Parsed, 9, "dear")
    other = step(Parsed, Middle1, 2, "other")
    composite = CompositeDataTransformer([dear, cheap, other])
    assert composite.transforms == {Raw: {Parsed}, Parsed: {Middle1}}
    assert composite.transformers == [dear, cheap, other]
    assert composite.transform(Parsed, Raw("x")).via == "cheap"
    assert composite.transform(Middle1, Parsed("y")).via == "other"
    assert composite.transform(Parsed, RawSubclass("z")).via == "cheap"
    with pytest.raises(UnsupportedError, match="Middle1"):
        composite.transform(Middle1, Raw("x"))


# -- chains in a pipeline ---------------------------------------------------------


def test_three_cheap_hops_beat_one_dear_hop() -> None:
    transformers = [
        step(Raw, Parsed, 5, "direct"),
        step(Raw, Middle1, 1, "a"),
        step(Middle1, Middle2, 1, "b"),
        step(Middle2, Parsed, 1, "c"),
    ]
    pipeline = DataPipeline([RawSource()], transformers)
    assert pipeline.get(Parsed, {"text": "t"}).via == "abc"


def test_costs_are_summed_along_the_chain() -> None:
    transformers = [
        step(Raw, Parsed, 2, "direct"),
        step(Raw, Middle1, 1, "a"),
        step(Middle1, Middle2, 1, "b"),
        step(Middle2, Parsed, 1, "c"),
    ]
    pipeline = DataPipeline([RawSource()], transformers)
    assert pipeline.get(Parsed, {"text": "t"}).via == "direct"


def test_a_composite_transformer_in_a_pipeline_joins_the_chain_search() -> None:
    composite = CompositeDataTransformer([step(Raw, Middle1, 1, "a"), step(Middle1, Parsed, 1, "b")])
    pipeline = DataPipeline([RawSource()], [composite, step(Raw, Parsed, 5, "direct")])
    assert pipeline.get(Parsed, {"text": "t"}).via == "ab"


def test_no_chain_raises_no_conversion_error_naming_requested_and_provided_types() -> None:
    pipeline = DataPipeline([RawSource()], [Parser()])
    with pytest.raises(NoConversionError) as error:
        pipeline.get(Middle1, {"text": "t"})
    assert isinstance(error.value, ValueError)
    assert "Middle1" in str(error.value) and "Raw" in str(error.value)


def test_the_transformer_sees_the_pipeline_and_the_query_in_its_context() -> None:
    parser = Parser()
    pipeline = DataPipeline([RawSource()], [parser])
    pipeline.get(Parsed, {"text": "t"})
    (context,) = parser.contexts
    assert context[PipelineContext.Keys.PIPELINE] is pipeline
    assert context[PipelineContext.Keys.QUERY] == {"text": "t"}


def test_each_sink_gets_the_value_it_accepts_before_or_after_conversion() -> None:
    raw_only, parsed_only, anything = Recorder({Raw}), Recorder({Parsed}), Recorder()
    source = RawSource()
    pipeline = DataPipeline([raw_only, parsed_only, anything, source], [Parser()])
    parsed = pipeline.get(Parsed, {"text": "t"})
    assert isinstance(parsed, Parsed)
    ((raw_type, raw_value),) = raw_only.items
    assert raw_type is Raw and isinstance(raw_value, Raw) and raw_value.text == "t"
    assert parsed_only.items == [(Parsed, parsed)]
    assert anything.items == [(Parsed, parsed)], "a wildcard sink keeps what the caller asked for"


def test_a_sink_is_fed_whichever_side_of_the_conversion_is_cheaper() -> None:
    # The sink accepts Middle1 only: Raw -> Middle1 costs 1, Parsed -> Middle1 costs 4.
    sink = Recorder({Middle1})
    transformers = [
        step(Raw, Parsed, 1, "p"),
        step(Raw, Middle1, 1, "raw-m"),
        step(Parsed, Middle1, 4, "parsed-m"),
    ]
    pipeline = DataPipeline([sink, RawSource()], transformers)
    pipeline.get(Parsed, {"text": "t"})
    ((stored_type, stored),) = sink.items
    assert stored_type is Middle1 and stored.via == "raw-m"


def test_get_many_converts_every_item_and_feeds_raw_sinks_the_raw_items() -> None:
    raw_only, anything = Recorder({Raw}), Recorder()
    pipeline = DataPipeline([raw_only, anything, RawSource()], [Parser()])
    items = pipeline.get_many(Parsed, {"texts": ["a", "b"]})
    assert [p.text for p in items] == ["a", "b"] and all(isinstance(p, Parsed) for p in items)
    assert [(t, v.text) for t, v in raw_only.items] == [(Raw, "a"), (Raw, "b")]
    assert [(t, v) for t, v in anything.items] == [(Parsed, p) for p in items]
