"""What the metrics bridges' tests share: a small source and a scripted run over it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from datapipelines import DataPipeline, DataSource, NotFoundError


@dataclass(frozen=True)
class Weather:
    city: str
    celsius: float


class Api(DataSource):
    """Knows Oslo and Bergen; Atlantis is not found; Mordor fails."""

    def __repr__(self) -> str:
        return "api"

    @property
    def provides(self) -> Any:
        return {Weather}

    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        if query["city"] == "Atlantis":
            raise NotFoundError("no such city")
        if query["city"] == "Mordor":
            raise RuntimeError("the API is down")
        return Weather(query["city"], 3.5)

    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        raise NotImplementedError


def scripted_run(pipeline: DataPipeline) -> None:
    for city in ("Oslo", "Oslo", "Bergen", "Oslo", "Atlantis"):
        try:
            pipeline.get(Weather, {"city": city})
        except NotFoundError:
            pass
    with pytest.raises(RuntimeError):
        pipeline.get(Weather, {"city": "Mordor"})
    for _ in range(200):
        pipeline.get(Weather, {"city": "Bergen"})


class IngestingPipeline(DataPipeline):
    """Stands in for a pipeline with an ingest section in its stats (its shape as ingest reports it)."""

    ingest: dict[str, Any] = {}

    def stats(self) -> dict[str, Any]:
        report: dict[str, Any] = super().stats()
        report["ingest"] = self.ingest
        return report


def expected_counters(pipeline: DataPipeline) -> Iterator[tuple[str, tuple[tuple[str, str], ...], int]]:
    """Every counter the bridges must export, straight from stats(): (name, sorted labels, value)."""
    stats = pipeline.stats()
    for group, role, counters in (
        ("tiers", "tier", ("hits", "misses", "puts", "errors", "skips", "damaged")),
        ("sources", "source", ("calls", "misses", "errors", "joins", "stale", "negative")),
    ):
        for element, entry in stats[group].items():
            labels = tuple(sorted({"pipeline": pipeline.name, role: element}.items()))
            for counter in counters:
                yield f"{role}.{counter}", labels, entry[counter]
