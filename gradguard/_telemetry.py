"""One structured event per guarded call: how long it took and what memory it used.

Events go through structlog, never around it: to ``structlog.get_logger("gradguard")``,
so the application's configuration (processors, renderers, the stdlib bridge) applies,
or, with ``gradguard.configure(log_file=...)``, to gradguard's own JSON-lines file through
a logger built for it alone. Nothing a logger does can break the call it describes: any
error while measuring or emitting is swallowed, and reported once with a
``TelemetryWarning``.

On CUDA, kernels run after the host has moved on, so the device time of a call is taken
from CUDA events recorded on the current stream, and its event is emitted once the end
event has completed: at a later call, at ``gradguard.flush()`` or at exit (``sync=True``
waits for it instead).
"""

from __future__ import annotations

import atexit
import contextvars
import math
import os
import random
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import structlog
import torch
from torch import nn

from . import _config
from ._errors import TelemetryWarning
from ._memory import Probe, TensorProbe, probe_for, suspend
from ._outputs import any_tensor, shallow_tensors
from ._stack import user_stacklevel

if TYPE_CHECKING:
    from ._policy import Policy

__all__ = ["Measure", "Recorder", "capture_events", "flush"]

SCHEMA = 1
CALL_EVENT = "gradguard.call"

_HOST = socket.gethostname()
_logger = structlog.get_logger("gradguard")
_Tensor = torch.Tensor
_perf_ns = time.perf_counter_ns
_time = time.time


def _line_renderer() -> Any:
    """``render(event_dict) -> bytes``: one JSON line, newline included."""
    try:
        import orjson
    except ImportError:  # the stdlib renders the same JSON, about twice as slowly
        import json

        def render(event: dict[str, Any]) -> bytes:
            try:
                text = json.dumps(event, default=repr, separators=(",", ":"))
            except TypeError:  # keys json cannot write (a tuple, say): as strings
                text = json.dumps(_str_keys(event), default=repr, separators=(",", ":"))
            return text.encode() + b"\n"

        return render
    option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS

    def render_orjson(event: dict[str, Any]) -> bytes:
        try:
            return orjson.dumps(event, default=repr, option=option)
        except TypeError:  # keys orjson cannot write (a tuple, say): as strings
            return orjson.dumps(_str_keys(event), default=repr, option=option)

    return render_orjson


def _str_keys(value: Any) -> Any:
    """``value`` with the keys of every dict inside it made strings."""
    if isinstance(value, dict):
        return {str(k): _str_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_str_keys(v) for v in value]
    return value


_render_line = _line_renderer()

_stamp: tuple[int, str] = (0, "")


def _timestamp(now: float) -> str:
    """ISO 8601 UTC with microseconds; the date and time of day are formatted once a second."""
    global _stamp
    second = math.floor(now)
    cached = _stamp
    if cached[0] != second:
        cached = _stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return "%s.%06dZ" % (cached[1], (now - second) * 1_000_000)  # noqa: UP031 - fastest


_distributed: tuple[int, int] | None = None
_NO_RANK: tuple[None, None] = (None, None)
_dist_initialized = (
    torch.distributed.is_initialized if torch.distributed.is_available() else lambda: False
)


def _rank() -> tuple[int | None, int | None]:
    """(rank, world size) once torch.distributed is initialised, else (None, None)."""
    global _distributed
    if _distributed is not None:
        return _distributed
    if _dist_initialized():
        _distributed = (torch.distributed.get_rank(), torch.distributed.get_world_size())
        return _distributed
    return _NO_RANK


_pid = os.getpid()


def _forked() -> None:
    # A forked worker (a DataLoader's, say) is another process: its pid, its own file, its
    # own sample (settings are refreshed, which reseeds), none of the parent's CUDA events.
    global _pid, _distributed
    _pid = os.getpid()
    _distributed = None
    _pending.clear()
    _config.changed()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forked)


# --- where events go ------------------------------------------------------------------


class _FileSink:
    """gradguard's own JSON-lines output: one ``write`` of one whole line per event.

    structlog's ``merge_contextvars`` adds what the application bound; the line is
    rendered by orjson (or json) and written with ``os.write`` on a descriptor opened for
    appending, so processes sharing a file append whole lines. A structlog
    ``BoundLogger`` with its ``JSONRenderer`` and ``BytesLogger`` would render the same
    line, at about twice gradguard's whole per-call cost.

    Lines are not buffered: one system call per event is its largest single cost, but a
    line on disk as soon as its call ends is what ``tail -f``, a crash and processes
    sharing the file need, as structlog's ``BytesLogger`` and the stdlib's
    ``FileHandler`` also hold. ``sample=`` is the way to log less of a hot loop.
    """

    def __init__(self, template: str) -> None:
        rank = _rank()[0]
        # Until the process group is up, torchrun's RANK tells the rank; a process started
        # another way (torch.multiprocessing.spawn) that logs before it is rank 0 for now,
        # and its file is opened again under its own rank once the group is up.
        self.rank_pending = rank is None and "RANK" not in os.environ and "{rank}" in template
        if rank is None:
            raw = os.environ.get("RANK", "0") or "0"
            try:
                rank = int(raw)
            except ValueError:
                msg = (
                    f"the RANK environment variable must be an integer (torchrun sets it to "
                    f"the process's rank); got {raw!r}. Unset it or set it to 0, 1, ..."
                )
                raise ValueError(msg) from None
        self.template = template
        self.pid = os.getpid()
        self.path = template.format(pid=self.pid, rank=rank)
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # Unbuffered: each write() is one system call, one whole line.
        self.file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - lives with the sink
        self.merge = structlog.contextvars.merge_contextvars

    def write(self, level: str, event: str, fields: dict[str, Any]) -> None:
        fields["event"] = event
        line = _render_line(self.merge(None, level, fields))
        try:
            self.file.write(line)
        except ValueError:
            if _sink is None or _sink is self or not self.file.closed:
                raise
            # Another thread moved the process to another file between this thread's
            # look-up and its write (configure(), or the rank now known): write there.
            _sink.file.write(line)


_sink: _FileSink | None = None
_sink_lock = threading.Lock()


def _file_sink(template: str) -> _FileSink:
    global _sink
    sink = _sink
    if _stale(sink, template):
        with _sink_lock:
            sink = _sink
            if _stale(sink, template):
                old, sink = sink, _FileSink(template)
                _sink = sink
                if old is not None and old.pid == _pid:
                    old.file.close()  # another file for this process (see write)
    assert sink is not None
    return sink


def _stale(sink: _FileSink | None, template: str) -> bool:
    """Whether events need another file: configure() named one, this is a forked worker
    (its own ``{pid}``), or the process group now tells the rank the name waited for."""
    return (
        sink is None
        or sink.template != template
        or sink.pid != _pid
        or (sink.rank_pending and _dist_initialized())
    )


_captures: list[list[dict[str, Any]]] = []
_warned = False


_CHECK_LOGGING = (
    "Check the log_file (gradguard.configure) or the structlog configuration; "
    "gradguard.configure(enabled=False) turns logging off."
)
_CHECK_DEVICE = (
    "Its CUDA device time could not be read, so its event has no gpu_ms: a CUDA error "
    "stays with the process, and CUDA_LAUNCH_BLOCKING=1 shows the operation that made it."
)


def _warn_once(error: BaseException, what_to_do: str = _CHECK_LOGGING) -> None:
    global _warned
    if _warned:
        return
    _warned = True
    msg = (
        f"gradguard could not log a call ({type(error).__name__}: {error}); the call "
        f"itself went on. Further logging errors are not reported. {what_to_do}"
    )
    warnings.warn(msg, TelemetryWarning, stacklevel=user_stacklevel())


def emit(event: str, level: str, fields: dict[str, Any]) -> None:
    """Send one event to the capture, gradguard's file, or structlog; never raise."""
    try:
        if _captures:
            captured = {"event": event, **structlog.contextvars.get_contextvars(), **fields}
            _captures[-1].append(captured)
            return
        settings = _config.current()
        if _config.LEVELS[level] < _config.LEVELS[settings.level]:
            return
        if settings.log_file:
            _file_sink(settings.log_file).write(level, event, fields)
        else:
            getattr(_logger, level)(event, **fields)
    except Exception as error:
        _warn_once(error)


def emit_leak(target: str, call: int, receiver: str, message: str) -> None:
    """Emit a ``gradguard.leak`` event (when logging is on); never raise."""
    try:
        if not _config.current().enabled:
            return
        rank, world_size = _rank()
        fields = {
            "schema": SCHEMA,
            "timestamp": _timestamp(_time()),
            "level": "warning",
            "target": target,
            "call": call,
            "receiver": receiver,
            "message": message,
            "pid": _pid,
            "host": _HOST,
            "thread": threading.current_thread().name,
            "rank": rank,
            "world_size": world_size,
        }
    except Exception as error:
        _warn_once(error)
        return
    emit("gradguard.leak", "warning", fields)


@contextmanager
def capture_events() -> Iterator[list[dict[str, Any]]]:
    """Collect gradguard's events in a list instead of logging them (for tests).

    Events are complete dicts, with ``event`` and anything bound with
    ``structlog.contextvars``; events still waiting for a CUDA device time are flushed
    into the list when the block ends.

    Example::

        with gradguard.testing.capture_events() as events:
            predict(model, x)
        assert events[0]["mode"] == "inference"
    """
    captured: list[dict[str, Any]] = []
    _captures.append(captured)
    try:
        yield captured
    finally:
        try:
            flush()
        finally:
            _captures.remove(captured)


# --- measuring one call -----------------------------------------------------------------


class Measure:
    """What is known about one sampled call while it runs."""

    __slots__ = (
        "call",
        "device",
        "events",
        "fallback",
        "inference",
        "probe",
        "probe_state",
        "retried",
        "start_ns",
        "switched",
        "tracker",
        "training",
        "wall",
    )

    def __init__(
        self, call: int, inference: bool, training: int, device: torch.device | None, probe: Probe
    ) -> None:
        self.call = call
        self.inference = inference
        self.training = training
        self.device = device
        self.probe = probe
        self.switched = 0
        self.fallback = False
        self.retried = False
        self.events: tuple[Any, Any] | None = None
        self.wall = 0.0
        self.probe_state: Any = None
        self.start_ns = 0
        # The tensor tracker of memory="tensors" on a call made of steps: it tracks only
        # while a step runs (Target.enter/leave), not between steps.
        self.tracker: Any = None


_HOST_DEVICES = frozenset({"cpu", "meta"})


def _device_of(args: Any, kwargs: Any, modules: Any) -> torch.device | None:
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


# Events waiting for their CUDA end event, each with the structlog context of its call.
_pending: list[tuple[Measure, dict[str, Any], str, contextvars.Context]] = []
_pending_lock = threading.Lock()
_atexit_registered = False


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(flush)


def _drain(block: bool) -> None:
    """Emit the events whose CUDA end event has completed (all of them with ``block``).

    Events wait in call order, and the walk stops at the first whose end event is still
    pending: end events on one stream complete in order, so a call queries one event
    however far the host has run ahead of the device, not every event still waiting.
    """
    with _pending_lock:
        count = 0
        for measure, *_ in _pending:
            if not block and not _done(measure.events[1]):  # type: ignore[index]
                break
            count += 1
        ready = _pending[:count]
        del _pending[:count]
    for measure, fields, level, context in ready:
        try:
            start, end = measure.events  # type: ignore[misc]
            end.synchronize()
            fields["gpu_ms"] = start.elapsed_time(end)
        except Exception as error:
            _warn_once(error, _CHECK_DEVICE)
        context.run(emit, CALL_EVENT, level, fields)  # with the request id of its own call


def _done(end: Any) -> bool:
    try:
        return bool(end.query())
    except Exception:  # a device in error: the event goes out without its time, warned
        return True


def flush() -> None:
    """Emit every event still waiting for its CUDA device time, waiting for the device."""
    if _pending:
        _drain(block=True)


class Recorder:
    """Decides, per target, whether a call is measured, and measures it."""

    __slots__ = (
        "_active",
        "_generation",
        "_memory",
        "_policy",
        "_rng",
        "_sample",
        "_seed_name",
        "_sync",
    )

    def __init__(self, name: str, policy: Policy) -> None:
        self._policy = policy
        self._generation = -1
        self._active = False
        self._sample = 1.0
        self._memory = policy.memory
        self._sync = policy.sync
        self._rng = random.Random()
        self._seed_name = name

    def _refresh(self) -> None:
        settings = _config.current()
        policy = self._policy
        self._generation = _config.generation()
        self._active = settings.enabled if policy.log is None else policy.log
        self._sample = settings.sample if policy.sample is None else policy.sample
        if settings.seed is not None:  # the same calls of this target, run after run
            self._rng.seed(settings.seed ^ zlib.crc32(self._seed_name.encode()))
        else:  # fresh entropy, so forked workers do not all sample the same calls
            self._rng.seed()

    def sampled(self) -> bool:
        """Whether this call emits an event: the whole cost of a call that does not."""
        if self._generation != _config._generation:
            self._refresh()
        if not self._active:
            return False
        sample = self._sample
        return sample >= 1.0 or self._rng.random() < sample

    def begin(
        self,
        call: int,
        modules: Any,
        args: Any,
        kwargs: Any,
        inference: bool,
        switch: bool,
        stepped: bool = False,
    ) -> Measure | None:
        """Start measuring a sampled call; ``None`` if measuring failed (never raises).

        ``switch`` says whether the call switches its modules to eval; if not, those in
        training mode are counted (``training_modules``).
        """
        try:
            device = _device_of(args, kwargs, modules)
            probe = probe_for(device, self._memory)
            training = 0 if switch else sum(1 for m in modules or () if m.training)
            measure = Measure(call, inference, training, device, probe)
            if device is not None and device.type == "cuda":
                stream = torch.cuda.current_stream(device)
                start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                start.record(stream)
                end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
                measure.events = (start, end)
            measure.wall = _time()
            measure.probe_state = probe.start()
            if stepped and isinstance(probe, TensorProbe):
                measure.tracker = measure.probe_state
                suspend(measure.tracker)
            measure.start_ns = _perf_ns()
            return measure
        except Exception as error:
            _warn_once(error)
            return None

    def end(
        self,
        measure: Measure | None,
        target: Any,
        error: BaseException | None,
        result: Any = None,
    ) -> None:
        """Finish measuring and emit the event (or queue it for its CUDA time)."""
        if measure is None:
            return
        try:
            if measure.events is not None:  # first: the device time ends where the call did
                measure.events[1].record(torch.cuda.current_stream(measure.device))
            wall_ns = _perf_ns() - measure.start_ns
            before, after, peak = measure.probe.stop(measure.probe_state)
            rank, world_size = _rank()
            device = measure.device
            ran_inference = measure.inference and not measure.retried
            status = "ok" if error is None else "error"
            fields: dict[str, Any] = {
                "schema": SCHEMA,
                "timestamp": _timestamp(measure.wall),
                "level": "info" if error is None else "error",
                "target": target.name,
                "kind": target.kind,
                "mode": "inference" if ran_inference else "no_grad",
                "fallback": measure.fallback,
                "status": status,
                "wall_ms": wall_ns / 1e6,
                "gpu_ms": None,
                "device": _device_name(device),
                "mem_kind": measure.probe.kind,
                "mem_before_bytes": before,
                "mem_after_bytes": after,
                "mem_peak_bytes": peak,
                "eval_switched": measure.switched,
                "call": measure.call,
                "pid": _pid,
                "host": _HOST,
                "thread": threading.current_thread().name,
                "rank": rank,
                "world_size": world_size,
                "grad_recorded": result is not None and any_tensor(result, _records_grad),
                "training_modules": measure.training,
            }
            if error is not None:
                fields["error"] = f"{type(error).__name__}: {error}"
            level = fields["level"]
            queued = False
            if measure.events is not None:
                start, end = measure.events
                if self._sync:
                    end.synchronize()
                    fields["gpu_ms"] = start.elapsed_time(end)
                else:
                    with _pending_lock:
                        _pending.append((measure, fields, level, contextvars.copy_context()))
                    _register_atexit()
                    queued = True
            if _pending:
                # Earlier calls' events leave here, once this call's work is queued on the
                # device, rather than at the next call's start, where writing them would
                # hold back that call's kernels.
                _drain(block=False)
        except Exception as failure:
            _warn_once(failure)
            return
        if not queued:
            emit(CALL_EVENT, level, fields)


def _records_grad(tensor: torch.Tensor) -> bool:
    return tensor.requires_grad


def reset() -> None:
    """Forget warnings given and files opened (for tests)."""
    global _warned, _sink
    _warned = False
    _sink = None
