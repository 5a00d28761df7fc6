"""Memory probes: what a call used, measured in the cheapest way its device allows.

A probe is chosen once per device and kept; each measured call does ``start()`` before
and ``stop(state)`` after, which returns ``(before, after, peak)`` in bytes (``None``
where the probe cannot tell). No probe changes what the user's own measurements read,
except the ``"peak"`` probes, which reset a peak counter by design and say so.
"""

from __future__ import annotations

import os
import sys
import weakref
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

resource: Any
try:
    import resource  # POSIX only: on Windows the CPU figures are null
except ImportError:  # exercised by tests/test_portability.py, which hides the module
    resource = None

__all__ = ["Probe", "TensorProbe", "probe_for", "resume", "suspend"]

Reading = tuple[int | None, int | None, int | None]
_NONE: Reading = (None, None, None)


class Probe:
    """Measures nothing: ``memory=False``, or a device with no memory statistics."""

    kind: str | None = None

    def start(self) -> Any:
        return None

    def stop(self, state: Any) -> Reading:
        return _NONE


class _Statm:
    """Reads resident memory from ``/proc/self/statm`` through a file kept open.

    ``os.pread`` on an open descriptor costs a fraction of an ``open()``. The descriptor
    is opened again in a forked child, whose ``/proc/self`` is another file.
    """

    def __init__(self) -> None:
        self.rss = self._reader()
        if hasattr(os, "register_at_fork"):  # where there is /proc, there is fork
            os.register_at_fork(after_in_child=self._reopen)

    def _reopen(self) -> None:
        os.close(self._fd)
        self.rss = self._reader()

    def _reader(self) -> Any:
        # A closure over locals: the read is on every logged call, twice.
        fd = self._fd = os.open("/proc/self/statm", os.O_RDONLY)
        page, pread = os.sysconf("SC_PAGE_SIZE"), os.pread

        def rss() -> int:
            return int(pread(fd, 48, 0).split(None, 2)[1]) * page

        return rss


class RssProbe(Probe):
    """Process resident memory at the call's end (Linux; no peak, no side effect).

    One read of ``/proc/self/statm`` per call, when it ends (``mem_after_bytes``;
    ``mem_before_bytes`` is ``None``): the read is a system call that costs more than
    the rest of a logged call (~1.3 µs on a 2-core VM), and a figure from the call's
    start would double it. ``memory="peak"`` reads both ends, and the peak.
    """

    kind = "rss"

    def __init__(self, statm: _Statm) -> None:
        self._statm = statm

    def start(self) -> Any:
        return None

    def stop(self, state: Any) -> Reading:
        return None, self._statm.rss(), None


class RssPeakProbe(RssProbe):
    """RSS before and after the call, and the peak during it, by resetting the process's
    peak RSS (``VmHWM``).

    Opted into with ``memory="peak"``: the reset is process-wide, so ``getrusage``'s
    ``ru_maxrss`` and ``VmHWM`` read by anyone else start from the reset too.
    """

    def start(self) -> Any:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return self._statm.rss()

    def stop(self, state: Any) -> Reading:
        after = self._statm.rss()
        peak = None
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    peak = int(line.split()[1]) * 1024
                    break
        return state, after, peak


class MaxRssProbe(Probe):
    """Where there is no ``/proc``: the peak RSS of the process when the call raised it."""

    kind = "rss"
    _scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB elsewhere

    def start(self) -> Any:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def stop(self, state: Any) -> Reading:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return None, None, peak * self._scale if peak > state else None


class AllocatorProbe(Probe):
    """A device's caching allocator: bytes allocated before and after, and the peak.

    The allocator keeps one peak since its last reset. gradguard does not reset it (that
    would break the user's own ``max_memory_allocated()``), so the call's peak is known
    only when the call raised the process's peak, and ``None`` otherwise; ``memory="peak"``
    resets it before each call for an exact figure.

    On CUDA both figures come from one read of the allocator's nested statistics.
    ``torch.cuda.memory_allocated()`` and ``max_memory_allocated()`` each flatten every
    statistic of the allocator into a sorted dict first: about 130 µs apiece, four per
    call, where one nested read costs a fraction of that.
    """

    kind = "allocator"

    def __init__(self, device: torch.device, reset_peak: bool) -> None:
        self._device = device
        self._reset = reset_peak
        module: Any = getattr(torch, device.type)
        self._reset_peak = getattr(module, "reset_peak_memory_stats", None)
        nested = getattr(torch._C, "_cuda_memoryStats", None) if device.type == "cuda" else None
        if nested is not None:
            index = device.index if device.index is not None else module.current_device()

            def read() -> tuple[int, int | None]:
                stats = nested(index)["allocated_bytes"]["all"]
                return stats["current"], stats["peak"]

        else:
            allocated = module.memory_allocated
            highest = getattr(module, "max_memory_allocated", None)

            def read() -> tuple[int, int | None]:
                return allocated(device), None if highest is None else highest(device)

        self._read = read

    def start(self) -> Any:
        if self._reset and self._reset_peak is not None:
            self._reset_peak(self._device)
        return self._read()

    def stop(self, state: Any) -> Reading:
        before, peak_before = state
        after, peak = self._read()
        if peak is not None and not self._reset and peak <= peak_before:
            peak = None
        return before, after, peak


class MpsProbe(Probe):
    kind = "allocator"

    def start(self) -> Any:
        return torch.mps.current_allocated_memory()

    def stop(self, state: Any) -> Reading:
        return state, torch.mps.current_allocated_memory(), None


class TensorProbe(Probe):
    """Exact accounting of the tensors a call creates: bytes kept at the end, and peak.

    A ``TorchDispatchMode`` sees every op below autograd, so it also sees what autograd
    saves for backward. Each storage first seen as an op's output (not as an input: views
    and in-place results share their input's storage) counts while it lives. ``before`` is
    0: the figures are the call's own tensors, on any device. Costs a Python call per op:
    for development and the demo, not for production.
    """

    kind = "tensors"

    def start(self) -> Any:
        tracker = _TensorTracker()
        resume(tracker)
        return tracker

    def stop(self, state: Any) -> Reading:
        suspend(state)
        return 0, state.live, state.peak


def resume(tracker: Any) -> None:
    """Track ops again (a generator or coroutine step begins).

    A dispatch mode is a thread-wide stack entry, like grad mode: a call made of steps
    tracks its ops only while a step runs, never the consumer's or other tasks' ops.
    """
    if not tracker.active:
        tracker.__enter__()
        tracker.active = True


def suspend(tracker: Any) -> None:
    """Stop tracking ops (a step ends, or the call does)."""
    if tracker.active:
        tracker.active = False
        tracker.__exit__(None, None, None)


def _storages(values: Any) -> list[Any]:
    return [
        t.untyped_storage()
        for t in tree_leaves(values)
        if isinstance(t, torch.Tensor) and t.layout == torch.strided
    ]


class _TensorTracker(TorchDispatchMode):  # type: ignore[no-untyped-call]
    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.active = False
        self.live = 0
        self.peak = 0
        self._known: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()

    def _freed(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        known = self._known
        for storage in _storages((args, kwargs)):
            known.setdefault(storage, False)  # existed before: not the call's
        out = func(*args, **(kwargs or {}))
        for storage in _storages(out):
            if storage in known:
                continue
            known[storage] = True
            nbytes = storage.nbytes()
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._freed, nbytes)
        return out


_statm: _Statm | None = None
_cache: dict[tuple[torch.device | None, str], Probe] = {}


def probe_for(device: torch.device | None, memory: str) -> Probe:
    """The probe for calls on ``device`` with the ``memory`` option; built once, reused.

    ``memory``: ``"auto"`` (allocator on accelerators, RSS on the CPU), ``"peak"`` (the
    same, plus an exact peak by resetting the peak counter), ``"tensors"`` or ``"off"``.
    """
    global _statm
    key = (device, memory)
    probe = _cache.get(key)
    if probe is not None:
        return probe
    kind = device.type if device is not None else "cpu"
    if memory == "off":
        probe = Probe()
    elif memory == "tensors":
        probe = TensorProbe()
    elif kind == "mps":
        probe = MpsProbe()
    elif kind != "cpu" and hasattr(getattr(torch, kind, None), "memory_allocated"):
        assert device is not None
        probe = AllocatorProbe(device, reset_peak=memory == "peak")
    elif os.path.exists("/proc/self/statm"):
        _statm = _statm or _Statm()
        probe = RssPeakProbe(_statm) if memory == "peak" else RssProbe(_statm)
    elif resource is not None:
        probe = MaxRssProbe()
    else:  # neither /proc nor getrusage (Windows): the event's CPU memory figures are null
        probe = Probe()
    _cache[key] = probe
    return probe
