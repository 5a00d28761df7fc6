"""Timing helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable


def arguments(description: str | None) -> tuple[int, int]:
    """Parse the options every benchmark takes: calls per round, and rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--number", type=int, default=20000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=15, help="rounds; the best is kept")
    args = parser.parse_args()
    return args.number, args.repeat


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Best time per call over ``repeat`` runs of ``number`` calls, in microseconds.

    The minimum is the figure least disturbed by whatever else the machine was doing.
    """
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def compare_us(fns: dict[str, Callable[[], object]], number: int, repeat: int) -> dict[str, float]:
    """Best time per call of each function, in microseconds, measured interleaved.

    Each round times every function once, in turn, so that a slow spell of a shared
    machine falls on all of them alike instead of on whichever ran during it.
    """
    best = dict.fromkeys(fns, float("inf"))
    timers = {name: timeit.Timer(fn) for name, fn in fns.items()}
    for _ in range(repeat):
        for name, timer in timers.items():
            best[name] = min(best[name], timer.timeit(number) / number * 1e6)
    return best
