"""Timing that survives a shared, noisy machine: warm up, repeat, report the median with its range.

A benchmark module ``bench/bench_<topic>.py`` defines ``run(quick: bool) -> list[Row]``. Each row names
what was timed and, where it has one, the baseline timed in the same process, so the ratio is the
figure that counts; absolute times only make sense next to the machine description printed with them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Timing:
    median_s: float
    min_s: float
    max_s: float
    repeats: int

    @classmethod
    def of(cls, samples: list[float]) -> Timing:
        return cls(statistics.median(samples), min(samples), max(samples), len(samples))


def measure(fn: Callable[[], object], repeats: int = 5, warmup: int = 1, sync: Callable | None = None) -> Timing:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before each clock read so GPU work is counted."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append(time.perf_counter() - start)
    return Timing.of(samples)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, steps_per_sample: int = 1, warmup: int = 3,
                sync: Callable | None = None) -> dict[str, Timing]:
    """Time several functions in turn within each repeat, so that load from elsewhere falls on all alike: each
    sample is the mean of ``steps_per_sample`` calls; ``sync`` (e.g. ``torch.cuda.synchronize``) is called around
    each timed stretch so GPU work is counted."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if sync:
                sync()
            start = time.perf_counter()
            for _ in range(steps_per_sample):
                fn()
            if sync:
                sync()
            samples[name].append((time.perf_counter() - start) / steps_per_sample)
    return {name: Timing.of(values) for name, values in samples.items()}


@dataclass
class Row:
    group: str
    name: str
    timing: Timing | None  # None for rows that measure something else (memory): see ``extra``
    baseline_name: str | None = None
    baseline: Timing | None = None
    target: str | None = None  # e.g. "<= 0.8x" or "<= 60 s"
    met: bool | None = None
    extra: dict = field(default_factory=dict)  # units other than seconds: cells/s, MB, errors

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline.median_s == 0:
            return None
        return self.timing.median_s / self.baseline.median_s

    def to_json(self) -> dict:
        out = asdict(self)
        out["ratio"] = self.ratio
        return out
