"""The pipeline's hit path against a raw dict lookup.

Prints the median ns per ``pipeline.get`` answered by the first of 1 and of 3
dict-backed 1.x-style stores, the ns of a raw dict lookup of the same value, and
the ratios. Run: ``.venv/bin/python benchmarks/bench_core.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

from _timing import median_ns

from datapipelines import DataPipeline, DataSink, DataSource, NotFoundError


@dataclass(frozen=True)
class Weather:
    city: str
    celsius: float


class DictStore(DataSource, DataSink):
    """A 1.x-style store, as Cassiopeia users write them: a dict behind dispatched handlers."""

    def __init__(self) -> None:
        self.data: dict[str, Weather] = {}

    @DataSource.dispatch
    def get(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSource.dispatch
    def get_many(self, type: Any, query: Any, context: Any = None) -> Any:
        pass

    @DataSink.dispatch
    def put(self, type: Any, item: Any, context: Any = None) -> None:
        pass

    @DataSink.dispatch
    def put_many(self, type: Any, items: Any, context: Any = None) -> None:
        pass

    @get.register(Weather)
    def get_weather(self, query: Any, context: Any = None) -> Weather:
        try:
            return self.data[query["city"]]
        except KeyError:
            raise NotFoundError(f"no weather for {query['city']}") from None

    @put.register(Weather)
    def put_weather(self, item: Weather, context: Any = None) -> None:
        self.data[item.city] = item


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--number", type=int, default=50_000)
    args = parser.parse_args()

    value = Weather("Oslo", 3.5)
    one = DictStore()
    three = [DictStore(), DictStore(), DictStore()]
    for store in [one, *three]:
        store.put(Weather, value)
    single = DataPipeline([one])
    triple = DataPipeline(three)
    raw = {"Oslo": value}
    query = {"city": "Oslo"}
    assert single.get(Weather, query) is value and triple.get(Weather, query) is value

    medians = median_ns(
        {
            "raw dict lookup": lambda: raw[query["city"]],
            "pipeline.get, 1 store": lambda: single.get(Weather, query),
            "pipeline.get, first of 3 stores": lambda: triple.get(Weather, query),
        },
        number=args.number,
        repeats=args.repeats,
    )
    base = medians["raw dict lookup"]
    print(f"$ {sys.executable} {' '.join(sys.argv)}")
    print(f"{'case':<34}{'median ns':>12}{'x raw dict':>12}")
    for name, ns in medians.items():
        print(f"{name:<34}{ns:>12.0f}{ns / base:>12.1f}")
    print("goal: a first-store hit under 1500 ns")


if __name__ == "__main__":
    main()
