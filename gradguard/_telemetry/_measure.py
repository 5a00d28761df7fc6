"""Measuring one call: decide what to measure once per target, capture raw figures per call.

A ``Recorder`` per target reads the settings when they change (never per call) and
picks one of two paths for each call:

- **aggregate only** (the default when nothing is configured, and calls sampled out of
  the log): two clock reads, one byte of flags and one float appended to the target's
  aggregate; no device look-up, no memory probe, no system call;
- **full event**: the device the call computes on, its memory probe, CUDA timing events
  from a pool, and a ``CallRecord`` handed to the pipeline, which builds, renders and
  writes the event off the call path.
"""

from __future__ import annotations

import contextvars
import random
import threading
import time
import zlib
from typing import TYPE_CHECKING, Any

import structlog
import torch
from torch import nn

from .. import _config
from .._memory import Probe, TensorProbe, _cache as _probes, probe_for, suspend
from .._outputs import any_tensor, shallow_tensors
from ._aggregate import AGGREGATES, ERROR, FALLBACK, FOLD_EVERY, GRAD, NO_GRAD, TargetAggregate
from ._cuda import POOL, WAITING, Timing
from ._otel import OTEL
from ._pipeline import PIPELINE, warn_once
from ._process import PROCESS
from ._render import CallRecord

if TYPE_CHECKING:
    from .._policy import Policy

__all__ = ["FullMeasure", "Measure", "Recorder", "device_of", "flush"]

_perf_ns = time.perf_counter_ns
_time = time.time
_current_thread = threading.current_thread
_get_ident = threading.get_ident
_copy_context = contextvars.copy_context
_new_tuple = tuple.__new__
_new_measure = object.__new__
_FOLD_MASK = FOLD_EVERY - 1
_waiting_items = WAITING._items  # the list itself: its truth is the cheapest check
_captures = PIPELINE.captures  # the same list for the life of the process
_Tensor = torch.Tensor


class _StructlogConfigured:
    """``is_configured`` read as an attribute, where structlog's own object is not there."""

    @property
    def is_configured(self) -> bool:
        return structlog.is_configured()


# structlog.is_configured() returns this object's attribute: read straight, it is an
# attribute look-up on the path every unconfigured call takes, not a Python call.
_STRUCTLOG: Any = getattr(getattr(structlog, "_config", None), "_CONFIG", None)
if not hasattr(_STRUCTLOG, "is_configured"):
    _STRUCTLOG = _StructlogConfigured()


class Measure:
    """What is known about one measured call while it runs: on the aggregate-only path,
    only what the call path itself sets (``FullMeasure`` adds the rest).

    The call's outcome is kept as the aggregate's byte of flags from the start
    (``NO_GRAD`` for a call that starts under ``no_grad``, ``GRAD`` when modules are in
    training mode), so the aggregate-only path sets four slots and appends that byte
    (with ``ERROR`` or ``GRAD`` added at the end). ``fallback`` and ``retried``, set by
    the call path only when a call falls back, are properties over those flags.
    """

    __slots__ = ("call", "flags", "start_ns", "switched")
    # Read on the full-event path only, set there (FullMeasure's slots shadow these):
    # class attributes, so the aggregate-only path does not pay for setting them.
    device: torch.device | None = None
    probe: Probe | None = None
    probe_state: Any = None
    timing: Timing | None = None
    span: Any = None
    # The tensor tracker of memory="tensors" on a call made of steps: it tracks only
    # while a step runs (Target.enter/leave), not between steps.
    tracker: Any = None
    wall = 0.0
    training = 0  # modules in training mode (not switched to eval)
    call: int
    flags: int
    start_ns: int
    switched: int

    def __init__(self, call: int, inference: bool, training: int) -> None:
        self.call = call
        self.flags = (0 if inference else NO_GRAD) | (GRAD if training else 0)
        self.switched = 0

    @property
    def fallback(self) -> bool:
        """Whether the call fell back from inference mode (``fallback="retry"``/``"warn"``)."""
        return bool(self.flags & FALLBACK)

    @fallback.setter
    def fallback(self, value: bool) -> None:
        if value:
            self.flags |= FALLBACK

    @property
    def retried(self) -> bool:
        """Whether the call was run again under ``no_grad`` after falling back."""
        return self.flags & (FALLBACK | NO_GRAD) == FALLBACK | NO_GRAD

    @retried.setter
    def retried(self, value: bool) -> None:
        if value:  # only a call that started in inference mode falls back
            self.flags |= NO_GRAD

    @property
    def inference(self) -> bool:
        """Whether the call started in inference mode (a retried call did)."""
        return not self.flags & NO_GRAD or self.retried

    def saw_net(self, training: int, switched: int) -> None:
        """What the run-time net saw in the call: ``training`` modules that started their
        forward in training mode and stayed so (the call counts as one that ran modules
        in training mode), and ``switched`` modules it switched to eval
        (``eval_switched`` counts them with those switched up front)."""
        if training:
            self.flags |= GRAD
        self.switched += switched


class FullMeasure(Measure):
    """A call that emits a full event (or an OpenTelemetry span): device, probe, timing."""

    __slots__ = ("device", "probe", "probe_state", "span", "timing", "tracker", "training", "wall")

    def __init__(
        self,
        call: int,
        inference: bool,
        training: int,
        device: torch.device | None,
        probe: Probe | None,
    ) -> None:
        Measure.__init__(self, call, inference, training)
        self.training = training
        self.device = device
        self.probe = probe
        self.probe_state = None
        self.timing = None
        self.span = None
        self.tracker = None

    def saw_net(self, training: int, switched: int) -> None:
        Measure.saw_net(self, training, switched)
        self.training += training


_HOST_DEVICES = frozenset({"cpu", "meta"})


def device_of(args: Any, kwargs: Any, modules: Any) -> torch.device | None:
    """Where the call computes: an accelerator among its inputs and models, else the host.

    An input on an accelerator decides at once (a model offloaded to the CPU or to
    ``meta``, as accelerate and FSDP do, computes where its inputs are). Otherwise the
    models' device: ``predict(model, cpu_batch)`` that moves the batch onto the model's
    GPU inside is timed and measured on the GPU.
    """
    tensor = next(shallow_tensors(args), None)
    if tensor is None and kwargs:
        tensor = next(shallow_tensors(kwargs.values()), None)
    if tensor is not None and tensor.device.type not in _HOST_DEVICES:
        return tensor.device
    for module in modules or ():
        device = _module_device(module)
        if device is not None and (device.type != "meta" or tensor is None):
            return device
    return None if tensor is None else tensor.device


def _module_device(root: nn.Module) -> torch.device | None:
    """The device of a parameter below ``root``, else of a buffer.

    Walks the module dicts directly, depth first, so a parameter is found at the end of
    one path down the tree, not after every module above its depth (``parameters()``
    builds a generator chain through ``named_modules()``: several µs on every logged
    call). A model whose parameters sit on several devices is logged on the first found.
    """
    buffer_device = None
    stack: list[nn.Module | None] = [root]
    while stack:
        module = stack.pop()
        if module is not None:
            for parameter in module._parameters.values():
                if parameter is not None:
                    return parameter.device
            if buffer_device is None:
                for buffer in module._buffers.values():
                    if buffer is not None:
                        buffer_device = buffer.device
                        break
            stack.extend(module._modules.values())
    return buffer_device


_device_names: dict[torch.device, str] = {}


def _device_name(device: torch.device | None) -> str | None:
    if device is None:
        return None
    name = _device_names.get(device)
    if name is None:
        name = _device_names[device] = str(device)
    return name


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


class Recorder:
    """Decides, per target, what a call measures, and measures it."""

    __slots__ = (
        "_active",
        "_add_flags",
        "_add_wall",
        "_aggregate",
        "_batched",
        "_errors_only",
        "_events",
        "_generation",
        "_kind",
        "_memory",
        "_otel",
        "_policy",
        "_rng",
        "_sample",
        "_seed_name",
        "_sync",
        "_trace",
    )

    def __init__(self, name: str, kind: str, policy: Policy) -> None:
        self._kind = kind  # of the target: "function", "module" or "scope"
        self._policy = policy
        self._generation = -1
        self._active = False
        self._events = False
        self._batched = False
        self._errors_only = False
        self._otel = False
        self._trace = False
        self._sample = 1.0
        self._memory = policy.memory
        self._sync = policy.sync
        self._rng = random.Random()
        self._seed_name = name
        self._aggregate: TargetAggregate = AGGREGATES.target(name)
        self._add_wall = self._aggregate.add_wall
        self._add_flags = self._aggregate.add_flags

    def _refresh(self) -> None:
        settings = _config.current()
        policy = self._policy
        self._generation = _config.generation()
        self._aggregate = AGGREGATES.target(self._seed_name)
        self._add_wall = self._aggregate.add_wall
        self._add_flags = self._aggregate.add_flags
        self._active = settings.enabled if policy.log is None else policy.log
        self._events = self._active
        self._batched = PIPELINE.batched(settings)
        self._errors_only = _config.LOG_LEVELS[settings.level] > _config.LOG_LEVELS["info"]
        self._otel = settings.otel
        self._trace = settings.trace if policy.trace is None else policy.trace
        self._sample = settings.sample if policy.sample is None else policy.sample
        if settings.seed is not None:  # the same calls of this target, run after run
            self._rng.seed(settings.seed ^ zlib.crc32(self._seed_name.encode()))
        else:  # fresh entropy, so forked workers do not all sample the same calls
            self._rng.seed()

    def sampled(self) -> bool:
        """Whether this call is measured at all (``configure(enabled=False)``, ``log=False``:
        not even counted into the aggregates)."""
        if self._generation != _config._generation:
            self._refresh()
        return self._active

    def begin(
        self,
        call: int,
        modules: Any,
        args: Any,
        kwargs: Any,
        *,
        inference: bool,
        switch: bool,
        stepped: bool = False,
    ) -> Measure | None:
        """Start measuring a call; ``None`` if measuring failed (never raises).

        ``switch`` says whether the call switches its modules to eval; if not, those in
        training mode are counted (``training_modules``).
        """
        try:
            sample = self._sample
            if not (
                self._events
                and (self._batched or _captures or _STRUCTLOG.is_configured)
                and (sample >= 1.0 or self._rng.random() < sample)
            ):
                if self._trace:
                    traced = FullMeasure(call, inference, _training(modules, switch), None, None)
                    traced.span = OTEL.start_span(self._seed_name)
                    traced.start_ns = _perf_ns()
                    return traced
                # The aggregate-only path, written out: no __init__ frame, no generator,
                # four slots set. A module in training mode is looked for only where the
                # call does not switch its modules to eval.
                light = _new_measure(Measure)
                light.call = call
                light.flags = (
                    (0 if inference else NO_GRAD) | GRAD
                    if modules and not switch and _any_training(modules)
                    else 0 if inference else NO_GRAD
                )
                light.switched = 0
                light.start_ns = _perf_ns()
                return light
            device = device_of(args, kwargs, modules)
            probe = _probes.get((device, self._memory)) or probe_for(device, self._memory)
            # FullMeasure(...) written out: no __init__ frames.
            measure = _new_measure(FullMeasure)
            measure.call = call
            training = measure.training = _training(modules, switch)
            measure.flags = (0 if inference else NO_GRAD) | (GRAD if training else 0)
            measure.switched = 0
            measure.device = device
            measure.probe = probe
            measure.timing = measure.span = measure.tracker = None
            if self._trace:
                measure.span = OTEL.start_span(self._seed_name)
            if device is not None and device.type == "cuda":
                index = _cuda_index(device)
                timing = measure.timing = POOL.take(index)
                timing.start.record(torch.cuda.current_stream(index))
            measure.wall = _time()
            measure.probe_state = probe.start()
            if stepped and isinstance(probe, TensorProbe):
                measure.tracker = measure.probe_state
                suspend(measure.tracker)
            measure.start_ns = _perf_ns()
            return measure
        except Exception as error:
            warn_once(error)
            return None

    def end(
        self,
        measure: Measure | None,
        error: BaseException | None,
        result: Any = None,
    ) -> None:
        """Finish measuring: count the call, and hand its event on (or queue it for its
        CUDA time)."""
        if measure is None:
            return
        if type(measure) is not Measure:
            self._end_full(measure, error, result)  # type: ignore[arg-type]
            return
        try:
            wall_ns = _perf_ns() - measure.start_ns
            flags = measure.flags
            if error is not None:
                flags |= ERROR
            elif result is not None and not flags & GRAD and _any_grad(result):
                flags |= GRAD
            # Two appends to C arrays (a double, a byte), each one C call and atomic under
            # the GIL (see _aggregate): threads recording into one target need no lock.
            # The fold every FOLD_EVERY calls reads them in bulk.
            self._add_wall(wall_ns / 1e6)
            self._add_flags(flags)
            if not measure.call & _FOLD_MASK:
                self._aggregate.fold()
            if self._otel:
                OTEL.record(self._seed_name, not flags & NO_GRAD, wall_ns, error)
            if _waiting_items:
                WAITING.drain(block=False)
        except Exception as failure:
            warn_once(failure)

    def _end_full(
        self,
        measure: FullMeasure,
        error: BaseException | None,
        result: Any,
    ) -> None:
        try:
            timing = measure.timing
            if timing is not None:  # first: the device time ends where the call did
                timing.end.record(torch.cuda.current_stream(timing.device))
            wall_ns = _perf_ns() - measure.start_ns
            flags = measure.flags
            inference = not flags & NO_GRAD
            grad = result is not None and _any_grad(result)
            aggregate = self._aggregate
            aggregate.add_wall(wall_ns / 1e6)
            aggregate.add_flags(
                flags | (ERROR if error is not None else 0) | (GRAD if grad else 0)
            )
            if not measure.call & _FOLD_MASK:
                aggregate.fold()
            if self._otel:
                OTEL.record(self._seed_name, inference, wall_ns, error)
            probe = measure.probe
            if probe is None:  # traced only: no event
                OTEL.end_span(measure.span, self._seed_name, self._kind, measure, wall_ns, error)
                if _waiting_items:
                    WAITING.drain(block=False)
                return
            before, after, peak = probe.stop(measure.probe_state)
            if peak is not None:
                aggregate.add_mem(peak)
            device = _device_name(measure.device)
            if device is not None:
                aggregate.group.devices.add(device)
            rank = PROCESS.rank()
            # tuple.__new__ straight: a NamedTuple's own __new__ is a Python function.
            record: CallRecord = _new_tuple(
                CallRecord,
                (
                    self._seed_name,
                    self._kind,
                    inference,
                    bool(flags & FALLBACK),
                    None if error is None else f"{type(error).__name__}: {error}",
                    wall_ns,
                    measure.wall,
                    device,
                    probe.kind,
                    before,
                    after,
                    peak,
                    measure.switched,
                    measure.call,
                    _thread_name(),
                    rank.rank,
                    rank.world_size,
                    grad,
                    measure.training,
                    _copy_context(),
                    None,
                ),
            )
            if measure.span is not None:
                OTEL.end_span(
                    measure.span, self._seed_name, self._kind, measure, wall_ns, error, record
                )
            send = error is not None or not self._errors_only
            if timing is not None:
                if self._sync:
                    timing.end.synchronize()
                    gpu_ms = timing.start.elapsed_time(timing.end)
                    POOL.give_back(timing)
                    aggregate.add_gpu(gpu_ms)
                    record = record._replace(gpu_ms=gpu_ms)
                else:
                    WAITING.add(
                        record, timing, aggregate.add_gpu, batched=self._batched, event=send
                    )
                    send = False
            if _waiting_items:
                # Earlier calls' events leave here, once this call's work is queued on the
                # device, rather than at the next call's start, where writing them would
                # hold back that call's kernels.
                WAITING.drain(block=False)
        except Exception as failure:
            warn_once(failure)
            return
        if send:
            PIPELINE.submit(record, batched=self._batched)


def _thread_name() -> str:
    """``threading.current_thread().name``, without its frame for a thread threading knows.

    ``threading._active`` (ident -> Thread) is read from the module each time: threading
    may rebuild it (after a fork).
    """
    thread = threading._active.get(_get_ident())  # type: ignore[attr-defined]
    return (thread or _current_thread()).name


if not isinstance(getattr(threading, "_active", None), dict):  # another implementation

    def _thread_name() -> str:
        return _current_thread().name


def _training(modules: Any, switch: bool) -> int:
    """Modules in training mode that the call does not switch to eval."""
    return 0 if switch or not modules else sum(1 for m in modules if m.training)


def _any_training(modules: Any) -> bool:
    for module in modules:  # noqa: SIM110 - a plain loop: any() would build a generator
        if module.training:
            return True
    return False


def _any_grad(result: Any) -> bool:
    """Whether the call's result records autograd history (a tensor requiring grad)."""
    if type(result) is _Tensor:  # the common case, without the walk's frames
        return result.requires_grad
    return any_tensor(result, _records_grad)


def _records_grad(tensor: torch.Tensor) -> bool:
    return tensor.requires_grad


def flush() -> None:
    """Write every event gradguard still holds: wait for the device times of CUDA calls,
    then write the waiting batch to the log file (or the console).

    Events are written in batches off the call path, at most about half a second after
    their call; ``flush()`` writes them now (before reading the log file, say).
    It is also run at exit, when a multiprocessing worker ends, before ``fork()`` and
    when ``configure()`` changes the settings.
    """
    WAITING.drain(block=True)
    PIPELINE.flush()
