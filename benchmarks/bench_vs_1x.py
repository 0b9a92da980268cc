"""This release against datapipelines 1.x, on the same 1.x-style code.

Installs datapipelines 1.0.7 (with networkx and merakicommons) into
``benchmarks/.datapipelines-1x/`` on first use, then measures, in one run, the
median ns of a ``pipeline.get`` answered by the first of 3 dict-backed stores and
of a miss answered by a source behind them, in 1.x (in a subprocess, so the two
packages never meet) and here, and prints the ratios.
Run: ``.venv/bin/python benchmarks/bench_vs_1x.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE / ".datapipelines-1x"

# The same code runs against either package: only sys.path differs.
MEASURE = r"""
import json, statistics, sys, timeit
from typing import Any
from datapipelines import DataPipeline, DataSink, DataSource, NotFoundError

class Weather:
    def __init__(self, city):
        self.city = city

class DictStore(DataSource, DataSink):
    def __init__(self):
        self.data = {}
    @DataSource.dispatch
    def get(self, type, query, context=None): pass
    @DataSource.dispatch
    def get_many(self, type, query, context=None): pass
    @DataSink.dispatch
    def put(self, type, item, context=None): pass
    @DataSink.dispatch
    def put_many(self, type, items, context=None): pass
    @get.register(Weather)
    def get_weather(self, query, context=None):
        try:
            return self.data[query["city"]]
        except KeyError:
            raise NotFoundError("no weather") from None
    @put.register(Weather)
    def put_weather(self, item, context=None):
        self.data[item.city] = item

class Api(DataSource):
    @DataSource.dispatch
    def get(self, type, query, context=None): pass
    @DataSource.dispatch
    def get_many(self, type, query, context=None): pass
    @get.register(Weather)
    def get_weather(self, query, context=None):
        return Weather(query["city"])

number, repeats = int(sys.argv[1]), int(sys.argv[2])
stores = [DictStore(), DictStore(), DictStore()]
pipeline = DataPipeline([*stores, Api()])
pipeline.get(Weather, {"city": "Oslo"})
hit = lambda: pipeline.get(Weather, {"city": "Oslo"})

def miss():
    for store in stores:
        store.data.clear()
    pipeline.get(Weather, {"city": "Oslo"})

samples = {"hit": [], "miss": []}
for _ in range(repeats):
    samples["hit"].append(timeit.timeit(hit, number=number) / number * 1e9)
    samples["miss"].append(timeit.timeit(miss, number=number // 10) / (number // 10) * 1e9)
print(json.dumps({name: statistics.median(values) for name, values in samples.items()}))
"""


def ensure_1x() -> None:
    if (TARGET / "datapipelines").is_dir():
        return
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(TARGET), "datapipelines==1.0.7"],
        check=True,
    )


def measure(path: Path | None, number: int, repeats: int) -> dict[str, float]:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    command = [sys.executable, "-c", MEASURE, str(number), str(repeats)]
    # `python -c` puts its working folder first on sys.path: run each where only its own package is.
    done = subprocess.run(command, env=env, cwd=path or HERE, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3, help="alternating 1.x / current subprocess runs")
    args = parser.parse_args()
    ensure_1x()
    old: dict[str, list[float]] = {"hit": [], "miss": []}
    new: dict[str, list[float]] = {"hit": [], "miss": []}
    for _ in range(args.rounds):
        for name, value in measure(TARGET, args.number, args.repeats).items():
            old[name].append(value)
        for name, value in measure(None, args.number, args.repeats).items():
            new[name].append(value)
    print(f"$ {sys.executable} {' '.join(sys.argv)}")
    print(f"{'case':<44}{'1.0.7 ns':>10}{'now ns':>10}{'speed-up':>10}")
    cases = (("hit", "hit in the first of 3 dict stores"), ("miss", "miss: 3 stores, a source, write-back"))
    for name, label in cases:
        before, after = sorted(old[name])[len(old[name]) // 2], sorted(new[name])[len(new[name]) // 2]
        print(f"{label:<44}{before:>10.0f}{after:>10.0f}{before / after:>9.1f}x")


if __name__ == "__main__":
    main()
