"""A mergeable percentile sketch with a bounded relative error.

The sketch follows DDSketch (Masson, Rim and Lee, VLDB 2019): positive values
fall into logarithmic buckets ``(gamma**(i-1), gamma**i]`` with
``gamma = (1 + alpha) / (1 - alpha)``, and a quantile is answered with the
bucket's midpoint ``2 * gamma**i / (gamma + 1)``.

**Error bound.** For a relative accuracy ``alpha`` (default 1%), every
quantile estimate ``e`` of a true value ``x >= MIN_INDEXABLE`` satisfies
``abs(e - x) <= alpha * x``. Values below ``MIN_INDEXABLE`` (including 0) share
one zero bucket and are answered as 0. Estimates are clamped to the exact
minimum and maximum, which the sketch keeps alongside the exact count.

The true value of quantile ``q`` is the element at 0-based rank
``floor(q * (n - 1))`` of the sorted values (numpy's ``method="lower"``).

**Sum.** The sketch keeps the exact sum of the values added (``sum``), which a
Prometheus histogram needs beside its buckets.

**Threads.** ``buffer.append`` is one C call, atomic under the GIL, so threads may
append at once; folding and reading take a lock and fold only the values they copied,
so a value appended meanwhile waits for the next fold instead of being lost.

**Memory.** One counter per occupied bucket: about ``ln(max / min) / (2 * alpha)``
of them, e.g. ~1,400 for values spread over twelve orders of magnitude, no
matter how many values were added.

Example:
    >>> s = LogSketch()
    >>> for v in range(1, 101):
    ...     s.add(float(v))
    >>> abs(s.quantile(0.5) - 50) <= 0.01 * 50
    True
"""

from __future__ import annotations

import math
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from itertools import repeat
from operator import mul

__all__ = ["MAX_INDEXABLE", "MIN_INDEXABLE", "LogSketch"]

MIN_INDEXABLE = 1e-9
"""Smallest value given its own bucket; smaller ones count as zero."""

MAX_INDEXABLE = 1e300
"""Largest value the sketch accepts; callers reject larger ones as invalid."""

_BISECT_FROM = 256  # run length from which cutting at bucket bounds beats counting each value


class LogSketch:
    """Streaming quantiles with relative error ``relative_accuracy``.

    Values are appended to ``buffer``, an ``array("d")`` (the hot loop may
    bind ``sketch.buffer.append`` directly), and folded into the buckets in
    bulk by :meth:`flush`, which every reading method calls first; the caller
    decides how much to buffer between flushes. Values must be numbers in
    ``[0, MAX_INDEXABLE]``, which the caller checks; they are kept as doubles,
    so integers are exact up to 2**53.
    """

    __slots__ = (
        "_bins", "_count", "_inv_log_gamma", "_lock", "_log_gamma", "_max", "_min", "_sum",
        "_zeros", "alpha", "buffer",
    )  # fmt: skip

    def __init__(self, relative_accuracy: float = 0.01) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            msg = f"relative_accuracy must be strictly between 0 and 1; got {relative_accuracy!r}"
            raise ValueError(msg)
        self.alpha = relative_accuracy
        gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._log_gamma = math.log(gamma)
        self._inv_log_gamma = 1.0 / self._log_gamma
        self._bins: Counter[int] = Counter()
        self._zeros = 0
        self._count = 0
        self._min = math.inf
        self._max = -math.inf
        self._sum = 0.0
        self._lock = threading.RLock()
        # A C array: appending drops the Python float, and the flush sorts
        # contiguous doubles rather than objects scattered over the heap.
        self.buffer = array("d")

    def add(self, value: float) -> None:
        """Add one value in ``[0, MAX_INDEXABLE]``."""
        self.buffer.append(value)

    def flush(self) -> None:
        """Fold the buffered values into the buckets.

        The buffer is sorted; a long run is cut at bucket boundaries with
        bisect, so that Python-level work is per occupied bucket rather than
        per value, and a short one goes through C-level maps into the counter.
        """
        buffer = self.buffer
        if not buffer:
            return
        with self._lock:
            # Copy, then delete exactly what was copied: a value another thread appends
            # between the two stays in the buffer for the next fold.
            n = len(buffer)
            values = sorted(buffer[:n])
            del buffer[:n]
            if n:
                self._fold(values)

    def _fold(self, values: list[float]) -> None:
        n = len(values)
        self._sum += math.fsum(values)
        pos = bisect_left(values, MIN_INDEXABLE)
        self._zeros += pos
        self._count += n
        self._min = min(self._min, values[0])
        self._max = max(self._max, values[-1])
        bins = self._bins
        log, exp, ceil = math.log, math.exp, math.ceil
        inv_log_gamma, log_gamma = self._inv_log_gamma, self._log_gamma
        if n - pos < _BISECT_FROM:
            logs = map(log, values[pos:])
            bins.update(map(ceil, map(mul, logs, repeat(inv_log_gamma))))
            return
        while pos < n:
            index = ceil(log(values[pos]) * inv_log_gamma)
            # Take the values up to the bucket's upper bound gamma**index, and
            # at least one, in case rounding put the bound just below values[pos].
            end = max(bisect_right(values, exp(index * log_gamma), pos), pos + 1)
            bins[index] += end - pos
            pos = end

    def merge(self, other: LogSketch) -> None:
        """Add every value of ``other`` (same relative accuracy) to this sketch."""
        if other.alpha != self.alpha:
            msg = (
                f"cannot merge a sketch of accuracy {other.alpha} into one of {self.alpha}; "
                "build both with the same relative_accuracy"
            )
            raise ValueError(msg)
        self.flush()
        other.flush()
        with self._lock, other._lock:
            self._bins.update(other._bins)
            self._zeros += other._zeros
            self._count += other._count
            self._sum += other._sum
            self._min = min(self._min, other._min)
            self._max = max(self._max, other._max)

    @property
    def count(self) -> int:
        """Exact number of values added."""
        self.flush()
        return self._count

    @property
    def sum(self) -> float:
        """Exact (``math.fsum`` per fold) sum of the values added."""
        self.flush()
        return self._sum

    @property
    def min(self) -> float | None:
        """Exact smallest value, or None when empty."""
        self.flush()
        return self._min if self._count else None

    @property
    def max(self) -> float | None:
        """Exact largest value, or None when empty."""
        self.flush()
        return self._max if self._count else None

    @property
    def bucket_count(self) -> int:
        """Number of occupied buckets (the sketch's memory, in counters)."""
        self.flush()
        return len(self._bins) + (1 if self._zeros else 0)

    def buckets(self) -> list[tuple[float, float, int]]:
        """Occupied buckets as ``(lower, upper, count)``, in order of value.

        Zeros come first as ``(0, MIN_INDEXABLE, n)``. What a histogram of the values
        needs, within the sketch's relative accuracy.
        """
        self.flush()
        gamma = math.exp(self._log_gamma)
        out = [(0.0, MIN_INDEXABLE, self._zeros)] if self._zeros else []
        for index in sorted(self._bins):
            upper = math.exp(index * self._log_gamma)
            out.append((upper / gamma, upper, self._bins[index]))
        return out

    def quantile(self, q: float) -> float | None:
        """Estimate the ``q``-quantile (0 <= q <= 1), or None when empty."""
        if not 0.0 <= q <= 1.0:
            msg = f"quantile must be between 0 and 1; got {q!r}"
            raise ValueError(msg)
        self.flush()
        if not self._count:
            return None
        with self._lock:
            return self._quantile(q)

    def _quantile(self, q: float) -> float | None:
        rank = math.floor(q * (self._count - 1))
        if rank < self._zeros:
            return max(0.0, self._min)
        seen = self._zeros
        for index in sorted(self._bins):
            seen += self._bins[index]
            if seen > rank:
                upper = math.exp(index * self._log_gamma)  # the bucket is (upper/gamma, upper]
                estimate = 2.0 * upper / (1.0 + math.exp(self._log_gamma))
                return min(max(estimate, self._min), self._max)
        return self._max  # unreachable: the bucket counts sum to the count
