"""PipelineContext: the pipeline and the query travel into every source, sink and transformer."""

from __future__ import annotations

from typing import Any

from datapipelines import DataPipeline, DataSink, DataSource, NotFoundError, PipelineContext


class Forecast:
    def __init__(self, city: str) -> None:
        self.city = city


class Spy(DataSource, DataSink):
    """A 1.x-style wildcard store that records the context of every call."""

    def __init__(self, found: bool) -> None:
        self.found = found
        self.seen: list[tuple[str, Any, Any]] = []

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        self.seen.append(("get", dict(query), context))
        query["added-by-handler"] = True
        if not self.found:
            raise NotFoundError()
        return Forecast(query["city"])

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        self.seen.append(("get_many", dict(query), context))
        if not self.found:
            raise NotFoundError()
        return [Forecast("a"), Forecast("b")]

    @DataSink.dispatch
    def put(self, type: Any, item: Any, context: Any = None) -> None:
        self.seen.append(("put", item, context))

    @DataSink.dispatch
    def put_many(self, type: Any, items: Any, context: Any = None) -> None:
        self.seen.append(("put_many", list(items), context))


def test_pipeline_context_is_a_dict_with_the_1x_keys() -> None:
    context = PipelineContext()
    assert isinstance(context, dict)
    assert PipelineContext.Keys.PIPELINE == "pipeline"
    assert PipelineContext.Keys.QUERY == "query"
    context[PipelineContext.Keys.PIPELINE] = "p"
    assert context == {"pipeline": "p"}


def test_get_hands_the_pipeline_and_the_callers_query_to_source_and_sinks() -> None:
    cache, origin = Spy(found=False), Spy(found=True)
    pipeline = DataPipeline([cache, origin])
    query = {"city": "paris"}
    value = pipeline.get(Forecast, query)
    assert query == {"city": "paris"}
    call, seen_query, context = origin.seen[0]
    assert call == "get" and seen_query == query
    assert isinstance(context, PipelineContext)
    assert context[PipelineContext.Keys.PIPELINE] is pipeline
    assert context[PipelineContext.Keys.QUERY] == {"city": "paris"}, "not the handler's mutated copy"
    put_call, item, put_context = cache.seen[-1]
    assert (put_call, item) == ("put", value)
    assert put_context[PipelineContext.Keys.PIPELINE] is pipeline
    assert put_context[PipelineContext.Keys.QUERY] == {"city": "paris"}
    assert put_context[PipelineContext.Keys.SOURCE] == "Spy"


def test_get_many_and_put_carry_their_query_too() -> None:
    cache, origin = Spy(found=False), Spy(found=True)
    pipeline = DataPipeline([cache, origin])
    pipeline.get_many(Forecast, {"country": "fr"})
    call, _, context = origin.seen[-1]
    assert call == "get_many"
    assert context[PipelineContext.Keys.PIPELINE] is pipeline
    assert context[PipelineContext.Keys.QUERY] == {"country": "fr"}
    pipeline.put(Forecast, Forecast("lyon"), query={"city": "lyon"})
    put_call, _, put_context = cache.seen[-1]
    assert put_call == "put"
    assert put_context[PipelineContext.Keys.PIPELINE] is pipeline
    assert put_context[PipelineContext.Keys.QUERY] == {"city": "lyon"}


def test_get_batch_gives_each_query_its_own_context() -> None:
    origin = Spy(found=True)
    pipeline = DataPipeline([origin])
    pipeline.get_batch(Forecast, [{"city": "a"}, {"city": "b"}])
    queries = [context[PipelineContext.Keys.QUERY] for call, _, context in origin.seen if call == "get"]
    assert queries == [{"city": "a"}, {"city": "b"}]
