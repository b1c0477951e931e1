"""Independent pieces of a velocity step side by side on a few Python threads.

For work whose heavy calls (numpy's copies, partitions, products and sums; torch's products and top-k) release
the GIL and where each piece writes only its own part of the output: the arithmetic of each piece is unchanged,
so the result has the same bits as one piece after another. On two cores this took the stochastic fit's gene
blocks from 21.5 to 13.9 s and the kNN's clusters from 15.6 to 10.1 s at 100,008 cells (bench/README.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

WORKERS = max(1, min(os.cpu_count() or 1, 4))  # pieces in flight (a gene block holds ~0.2 GB at 100,000 cells)


def ranges(n: int) -> list[tuple[int, int]]:
    """range(n) cut into ``WORKERS`` contiguous (first, last) parts, for work split once between the threads."""
    bounds = [n * i // WORKERS for i in range(WORKERS + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def each_on_threads(fn: Callable[[object], None], items: Iterable) -> None:
    """fn(item) for every item on ``WORKERS`` threads; the first piece's error is raised here."""
    with ThreadPoolExecutor(WORKERS) as pool:
        for _ in pool.map(fn, items):
            pass
