"""In-process aggregates per target: what ``gradguard.stats()``, ``gradguard.report()``
and the Prometheus collector read.

Every measured call is counted here, logged or not: its wall time into a log-bucket
sketch (the audit's ``LogSketch``: one implementation, the same 1% bound), and its
outcome as one byte of flags, each with one C call (``array.append``). They are folded
into counts and buckets in bulk when read and every ``FOLD_EVERY`` calls, so memory
stays bounded. (Keeping each call's ``Measure`` and reading it back at the fold costs
more in all: the fold then touches thousands of objects twice.)

**Threads.** ``array.append`` is a single C call, atomic under the
GIL, so threads recording into one target at once need no lock on the call path. A fold
takes the target's lock, copies exactly the items it found and deletes exactly those
(``del x[:n]``), so an item appended by another thread meanwhile waits for the next fold
instead of being lost or counted twice. (A free-threaded build, without the GIL, would
need a lock or per-thread buffers here.) ``stats()`` returns the same keys as a group of
``gradguard audit --format json``, built by the audit's own code.
"""

from __future__ import annotations

import io
import os
import sys
import threading
from array import array
from collections import Counter
from typing import IO, Any, NamedTuple

from .._audit._render import _group as _group_json, render as _render_audit
from .._audit._summary import GroupSummary, Summary, _Group
from ._process import PROCESS

__all__ = [
    "AGGREGATES",
    "ERROR",
    "FALLBACK",
    "FOLD_EVERY",
    "GRAD",
    "NO_GRAD",
    "Aggregates",
    "CallCounts",
    "TargetAggregate",
    "report",
    "stats",
]

RELATIVE_ACCURACY = 0.01
# Flags of one call, one byte: the call path ORs them, a fold counts each combination.
ERROR, NO_GRAD, FALLBACK, GRAD = 1, 2, 4, 8
FOLD_EVERY = 4096  # calls of a target between folds (call number & (FOLD_EVERY - 1) == 0)


class CallCounts(NamedTuple):
    """Calls of one target per outcome, as Prometheus labels them."""

    mode: str  # "inference" or "no_grad"
    status: str  # "ok" or "error"
    calls: int


class TargetAggregate:
    """The counts and sketches of one target name (targets sharing a name share one)."""

    __slots__ = (
        "_lock",
        "add_flags",
        "add_gpu",
        "add_mem",
        "add_wall",
        "flags",
        "group",
        "name",
        "outcomes",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.group = _Group(RELATIVE_ACCURACY)  # the audit's own accumulator
        self.flags = array("B")
        self.outcomes: Counter[int] = Counter()  # flags -> calls
        self._lock = threading.Lock()
        # Bound once: the call path appends through these.
        self.add_wall = self.group.add_wall
        self.add_gpu = self.group.add_gpu
        self.add_mem = self.group.add_mem
        self.add_flags = self.flags.append

    def fold(self) -> None:
        """Count the flags appended so far and fold the sketches' buffers."""
        with self._lock:
            flags = self.flags
            count = len(flags)  # delete exactly what was counted: appends meanwhile stay
            if count:
                self.outcomes.update(flags[:count].tobytes())
                del flags[:count]
            group, outcomes = self.group, self.outcomes
            group.errors = sum(n for f, n in outcomes.items() if f & ERROR)
            group.no_grad = sum(n for f, n in outcomes.items() if f & NO_GRAD)
            group.fallbacks = sum(n for f, n in outcomes.items() if f & FALLBACK)
            group.grad = sum(n for f, n in outcomes.items() if f & GRAD)
            rank = PROCESS.rank().rank
            if rank is not None:
                group.ranks.add(rank)
        self.group.flush()

    def leak(self) -> None:
        with self._lock:
            self.group.leaks += 1

    def summary(self) -> GroupSummary:
        """The audit's summary of this target (folds first)."""
        self.fold()
        return GroupSummary._from_group(self.name, self.group)

    def call_counts(self) -> list[CallCounts]:
        """Calls per (mode, status), folded first."""
        self.fold()
        by: Counter[tuple[str, str]] = Counter()
        for flags, n in self.outcomes.items():
            mode = "no_grad" if flags & NO_GRAD else "inference"
            by[mode, "error" if flags & ERROR else "ok"] += n
        return [CallCounts(mode, status, n) for (mode, status), n in sorted(by.items())]


class Aggregates:
    """Every target's aggregate in this process, by name."""

    def __init__(self) -> None:
        self._targets: dict[str, TargetAggregate] = {}
        self._lock = threading.Lock()
        self.generation = 0  # bumped by reset(), so recorders fetch their aggregate again

    def reset(self) -> None:
        """Forget every count (for tests, and in a forked child)."""
        with self._lock:
            self._targets = {}
            self.generation += 1

    def forked(self) -> None:
        """Start empty in a forked child, with a fresh lock: a parent's thread may have
        held the old one at the fork, and would never release it here."""
        self._lock = threading.Lock()
        self._targets = {}
        self.generation += 1

    def target(self, name: str) -> TargetAggregate:
        found = self._targets.get(name)
        if found is None:
            with self._lock:
                found = self._targets.get(name)
                if found is None:
                    found = self._targets[name] = TargetAggregate(name)
        return found

    def targets(self) -> list[TargetAggregate]:
        """Targets that have seen a call or a leak, sorted by name."""
        with self._lock:
            found = list(self._targets.values())
        for aggregate in found:
            aggregate.fold()
        return sorted((a for a in found if a.group.wall.count or a.group.leaks), key=_name)

    def summaries(self) -> list[GroupSummary]:
        return [a.summary() for a in self.targets()]

    def totals(self) -> GroupSummary:
        total = _Group(RELATIVE_ACCURACY)
        for aggregate in self.targets():
            total.merge(aggregate.group)
        return GroupSummary._from_group(None, total)


def _name(aggregate: TargetAggregate) -> str:
    return aggregate.name


AGGREGATES = Aggregates()


def stats() -> list[dict[str, Any]]:
    """This process's figures per target, as ``gradguard audit --format json`` groups them.

    One dict per target that has had a call (or a leak), sorted by name, with the audit's
    keys: ``key`` (the target), ``calls``, ``errors``, ``modes``, ``fallbacks``,
    ``grad_calls``, ``leaks``, ``wall_ms``, ``gpu_ms`` and ``mem_peak_bytes`` (each
    ``{"count", "min", "p50", "p95", "p99", "max"}`` or ``None``), ``devices`` and
    ``ranks``. Counts are exact; percentiles are within 1%. Calls are counted whether or
    not they are logged; ``gpu_ms`` and ``mem_peak_bytes`` are known for the calls that
    emitted a full event (a log file, the console, structlog, a capture).

    Example::

        >>> import gradguard
        >>> [s["key"] for s in gradguard.stats()]  # doctest: +SKIP
        ['app:predict']
    """
    return [_group_json(g) for g in AGGREGATES.summaries()]


def report(file: IO[str] | None = None) -> None:
    """Print the audit's table of this process's calls per target (to ``file`` or stdout).

    Example::

        >>> gradguard.report()  # doctest: +SKIP
        target       calls  errors  inference  no_grad  ...  wall p50  wall p95 ...
    """
    summary = Summary(
        by="target",
        groups=tuple(AGGREGATES.summaries()),
        totals=AGGREGATES.totals(),
        first=None,
        last=None,
        skipped=0,
        skipped_by_reason={"not_json": 0, "other_event": 0, "invalid": 0},
        relative_accuracy=RELATIVE_ACCURACY,
    )
    text = _render_audit("table", summary)
    head, _, rest = text.partition("\n")
    # The audit names its input files; here the input is this process.
    text = f"inputs: this process (pid {os.getpid()}), grouped by target\n{rest}"
    del head
    out = sys.stdout if file is None else file
    out.write(text)
    if isinstance(out, io.TextIOBase) or hasattr(out, "flush"):
        out.flush()
