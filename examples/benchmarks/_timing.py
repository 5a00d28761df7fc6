"""Timing helper shared by the benchmark scripts."""

from __future__ import annotations

import timeit
from collections.abc import Callable


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best time per call over ``repeat`` runs of ``number`` calls, in microseconds.

    The minimum is the figure least disturbed by whatever else the machine was doing.
    """
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6
