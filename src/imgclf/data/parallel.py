"""map() across processes when there are enough items to pay for starting them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

PARALLEL_MIN_ITEMS = 2000  # below that, starting processes costs more than it saves


def parallel_map(fn: Callable, items: Sequence, workers: int | None = None, chunksize: int = 128) -> Iterator:
    """map(fn, items) in order, across processes when there are enough items to pay for starting them."""
    workers = workers or os.cpu_count() or 1
    if workers <= 1 or len(items) < PARALLEL_MIN_ITEMS:
        yield from map(fn, items)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(fn, items, chunksize=chunksize)
