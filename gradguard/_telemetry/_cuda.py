"""Device time of calls on CUDA, at the smallest host cost per call.

Kernels run after the host has moved on, so a call's device time comes from a pair of
CUDA events recorded on the current stream, read once the end event has completed: at a
later call, at ``gradguard.flush()`` or at exit (``sync=True`` waits instead).

Host cost per call is kept down by reusing events from a pool (creating a CUDA event
is a driver call; recording a pooled one is not), by looking the current stream up by
device index, and by asking the device about one waiting event per call, not all of
them. Everything here is driven through small interfaces (``EventPool`` takes an event
factory; ``Waiting`` only calls ``query``, ``synchronize`` and ``elapsed_time``), so the
logic is tested on the CPU with fake events; the real CUDA calls run in
``tests/test_cuda.py`` on a GPU machine only.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

from ._pipeline import PIPELINE, warn_once
from ._render import CallRecord

__all__ = ["POOL", "WAITING", "EventPool", "Timing", "Waiting"]

_CHECK_DEVICE = (
    "Its CUDA device time could not be read, so its event has no gpu_ms: a CUDA error "
    "stays with the process, and CUDA_LAUNCH_BLOCKING=1 shows the operation that made it."
)


class Timing(NamedTuple):
    """The two events that time one call on the device, and the device's pool index."""

    start: Any
    end: Any
    device: int


def _cuda_event() -> Any:
    import torch

    return torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]


class EventPool:
    """Timing events to reuse, per device: taken at a call's start, given back once read.

    ``new`` makes an event (``torch.cuda.Event(enable_timing=True)``; tests pass a fake).
    At most ``keep`` idle events are kept per device, so a burst leaves no hoard behind.
    """

    def __init__(self, new: Callable[[], Any] = _cuda_event, keep: int = 256) -> None:
        self._new = new
        self._keep = keep
        self._free: dict[int, list[Any]] = {}
        self.created = 0

    def reset(self) -> None:
        self._free = {}
        self.created = 0

    def take(self, device: int) -> Timing:
        free = self._free.get(device)
        try:  # list.pop is atomic: two threads never get the same event
            start = free.pop() if free else self._make()
            end = free.pop() if free else self._make()
        except IndexError:  # another thread took the last one between the check and pop
            start, end = self._make(), self._make()
        return Timing(start, end, device)

    def _make(self) -> Any:
        self.created += 1
        return self._new()

    def give_back(self, timing: Timing) -> None:
        free = self._free.setdefault(timing.device, [])
        if len(free) < self._keep:
            free.append(timing.start)
            free.append(timing.end)


POOL = EventPool()


class _Item(NamedTuple):
    record: CallRecord
    timing: Timing
    gpu: Any  # the target's gpu_ms sketch buffer's append, or None
    batched: bool
    event: bool  # whether the call's event is sent (else only the aggregate learns)


class Waiting:
    """Calls whose device time is not known yet, in call order."""

    def __init__(self) -> None:
        self._items: list[_Item] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def reset(self) -> None:
        self._items.clear()  # the same list: the call path holds it
        self._lock = threading.Lock()

    def add(
        self, record: CallRecord, timing: Timing, gpu: Any, *, batched: bool, event: bool
    ) -> None:
        with self._lock:
            self._items.append(_Item(record, timing, gpu, batched, event))
        PIPELINE._hook_exit()  # at exit, flush() waits for the device and writes them

    def drain(self, *, block: bool) -> None:
        """Send the calls whose end event has completed (all of them with ``block``).

        The walk stops at the first end event still pending: end events on one stream
        complete in order, so a call queries one event however far the host has run
        ahead of the device, not every event still waiting.
        """
        if not self._items:
            return
        with self._lock:
            count = 0
            for item in self._items:
                if not block and not _done(item.timing.end):
                    break
                count += 1
            ready = self._items[:count]
            del self._items[:count]
        for item in ready:
            gpu_ms = None
            try:
                item.timing.end.synchronize()
                gpu_ms = item.timing.start.elapsed_time(item.timing.end)
                POOL.give_back(item.timing)  # read: the pair can time another call
            except Exception as error:
                warn_once(error, _CHECK_DEVICE)
            if gpu_ms is not None and item.gpu is not None:
                item.gpu(gpu_ms)
            if item.event:
                PIPELINE.submit(item.record._replace(gpu_ms=gpu_ms), batched=item.batched)


def _done(end: Any) -> bool:
    try:
        return bool(end.query())
    except Exception:  # a device in error: the event goes out without its time, warned
        return True


WAITING = Waiting()

if hasattr(os, "register_at_fork"):
    # A forked worker has none of the parent's CUDA events to wait for.
    os.register_at_fork(after_in_child=WAITING.reset)
