"""Shared timing helper for the benchmarks: interleaved repeats, medians in ns."""

from __future__ import annotations

import statistics
import timeit
from collections.abc import Callable, Mapping


def median_ns(cases: Mapping[str, Callable[[], object]], *, number: int, repeats: int) -> dict[str, float]:
    """Median ns per call of each case, measured in turns so machine noise hits all alike."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            samples[name].append(timeit.timeit(case, number=number) / number * 1e9)
    return {name: statistics.median(values) for name, values in samples.items()}
