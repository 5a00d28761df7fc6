"""What a scan found: the public records, and the session that gathers them.

A finding is made when the scan knows enough: a ``training_mode`` one at once, a
``graph_unused`` one only when the graph is freed, which may be long after the forward
(or in another thread, or from the collector). The watchers therefore hand finished
observations to a queue (``Session.post``, an atomic append that takes no lock), and the
findings are merged from it when someone reads them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal, NamedTuple, overload

__all__ = [
    "DELIBERATE",
    "KINDS",
    "Kind",
    "Observation",
    "ScanFinding",
    "ScanFindings",
    "Session",
]

Kind = Literal["graph_unused", "training_mode", "training_mode_deliberate"]

KINDS: tuple[Kind, ...] = ("graph_unused", "training_mode", "training_mode_deliberate")
# Kinds reported for information: training mode under no_grad that the code asked for
# (``torch.optim.swa_utils.update_bn``, Monte Carlo dropout). ``--fail-on`` and
# ``pytest --gradguard-scan=fail`` leave them out unless named.
DELIBERATE: frozenset[str] = frozenset({"training_mode_deliberate"})


class ScanFinding(NamedTuple):
    """One kind of waste at one place, with how often it was seen and what it cost.

    ``where`` is the user's ``file:line`` of the forward call (the first frame outside
    torch and gradguard); ``module`` the qualified class name of the outermost module
    called there; ``calls`` how many of its calls showed the waste; ``bytes_max`` and
    ``bytes_total`` the bytes autograd kept for backward per call (0 for the training-mode
    kinds); ``label`` the test that ran the forward under ``pytest --gradguard-scan``.
    """

    kind: Kind
    where: str
    module: str
    calls: int
    bytes_max: int
    bytes_total: int
    message: str
    label: str | None = None

    def __str__(self) -> str:
        cost = f", {_mib(self.bytes_max)} kept per call" if self.kind == "graph_unused" else ""
        times = "1 call" if self.calls == 1 else f"{self.calls} calls"
        return f"{self.where}: {self.kind}: {self.module} ({times}{cost}): {self.message}"


def _mib(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.2f} MiB)"


class Observation(NamedTuple):
    """One outermost module call that showed waste, as the watchers hand it over."""

    kind: Kind
    where: str
    module: str
    bytes: int
    detail: str  # what the message adds for this call (the modules in training mode)
    label: str | None


_FIX = {
    "graph_unused": (
        "its forward recorded an autograd graph that was freed without any backward "
        "using it; run it without recording: wrap the call in "
        "`with gradguard.scope(model):` or decorate the function that makes it with "
        "`@gradguard.infer`"
    ),
    "training_mode": (
        "{detail} ran in training mode with grad off, i.e. in evaluation code; put the "
        "model in eval for the call: `with gradguard.scope(model):` or `@gradguard.infer` "
        "(both run it in eval and inference mode, and restore it after)"
    ),
    "training_mode_deliberate": (
        "{detail} ran in training mode with grad off on purpose (BatchNorm with "
        "momentum=None as torch.optim.swa_utils.update_bn sets it, or dropout left in "
        "training while the model is in eval, as Monte Carlo dropout does); reported for "
        "information, not failed on unless named"
    ),
}


def message(kind: Kind, detail: str) -> str:
    """The sentence that says what was wrong and which gradguard line to add."""
    return _FIX[kind].format(detail=detail)


class ScanFindings(Sequence[ScanFinding]):
    """What a scan found: a sequence of ``ScanFinding``, false when nothing was found.

    Findings are sorted by bytes wasted (most first). A graph still alive when the block
    ends may yet be used by a backward: it is counted in ``pending`` and, if it is freed
    unused later, appears here then.

    Example::

        with gradguard.scan() as findings:
            run_eval(model, loader)
        assert not findings, str(findings)
    """

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    def _items(self) -> list[ScanFinding]:
        return self._session.findings()

    @overload
    def __getitem__(self, index: int) -> ScanFinding: ...
    @overload
    def __getitem__(self, index: slice) -> list[ScanFinding]: ...
    def __getitem__(self, index: int | slice) -> ScanFinding | list[ScanFinding]:
        return self._items()[index]

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self) -> Iterator[ScanFinding]:
        return iter(self._items())

    @property
    def pending(self) -> int:
        """Graphs recorded during the scan that are still alive and not used yet."""
        return self._session.pending

    def __repr__(self) -> str:
        return f"ScanFindings({self._items()!r})"

    def __str__(self) -> str:
        items = self._items()
        if items:
            return "\n".join(str(f) for f in items)
        text = "no unguarded inference found"
        pending = self._session.pending
        if pending:
            text += (
                f" ({pending} graph(s) recorded in the scan are still alive and may yet be "
                "used by a backward; a graph freed unused later is reported then)"
            )
        return text


class _Total:
    __slots__ = ("bytes_max", "bytes_total", "calls", "details")

    def __init__(self) -> None:
        self.calls = 0
        self.bytes_max = 0
        self.bytes_total = 0
        self.details: dict[str, None] = {}


_MERGE_EVERY = 4096  # observations waiting before a post merges them


class Session:
    """One scan: its label (the test running, under pytest), its queue, its totals."""

    def __init__(self) -> None:
        self.label: str | None = None
        # Graphs recorded, alive and unused, by id: added and taken out by the graphs
        # themselves (single dict operations, atomic: safe from finalizers).
        self.alive: dict[int, Any] = {}
        self._queue: deque[Observation] = deque()
        self._totals: dict[tuple[Kind, str, str, str | None], _Total] = {}
        self._lock = threading.Lock()  # taken only by readers, never by a finalizer

    @property
    def pending(self) -> int:
        """Graphs recorded, still alive, and not used by a backward yet."""
        return len(self.alive)

    def conclude(self) -> None:
        """The program is over: the graphs still alive were never used by a backward."""
        for graph in list(self.alive.values()):
            graph.conclude()

    def post(self, observation: Observation) -> None:
        """Hand over an observation; safe from finalizers and any thread (never waits)."""
        queue = self._queue
        queue.append(observation)
        if len(queue) > _MERGE_EVERY:
            # A long program read only at its end: merge now, so the queue stays small,
            # unless a reader (maybe this very thread, interrupted) is merging already.
            self._drain(blocking=False)

    def _drain(self, *, blocking: bool = True) -> None:
        if not self._lock.acquire(blocking):
            return
        try:
            self._merge()
        finally:
            self._lock.release()

    def _merge(self) -> None:
        """Fold the queue into the totals (with the lock held)."""
        queue = self._queue
        while queue:
            o = queue.popleft()
            key = (o.kind, o.where, o.module, o.label)
            total = self._totals.get(key)
            if total is None:
                total = self._totals[key] = _Total()
            total.calls += 1
            total.bytes_total += o.bytes
            total.bytes_max = max(total.bytes_max, o.bytes)
            if o.detail:
                total.details[o.detail] = None

    def findings(self, labels: Iterable[str | None] | None = None) -> list[ScanFinding]:
        """The findings so far, most bytes first (then by place), for ``labels`` if given."""
        with self._lock:
            self._merge()
            totals = [(key, t.calls, t.bytes_max, t.bytes_total, ", ".join(t.details))
                      for key, t in self._totals.items()]  # fmt: skip
        wanted = None if labels is None else set(labels)
        out = []
        for (kind, where, module, label), calls, bytes_max, bytes_total, detail in totals:
            if wanted is not None and label not in wanted:
                continue
            out.append(
                ScanFinding(kind, where, module, calls, bytes_max, bytes_total,
                            message(kind, detail), label)
            )  # fmt: skip
        out.sort(key=lambda f: (-f.bytes_total, KINDS.index(f.kind), f.where, f.module))
        return out
