"""Telemetry: what a guarded call took, counted in process and sent where configured.

Roles, in the way OpenTelemetry's SDK separates them:

- ``_measure``: per target, what a call measures (``Recorder``), and the raw figures of
  one call (``Measure``, then a ``CallRecord``);
- ``_aggregate``: per-target counts and log-bucket sketches (``gradguard.stats()``,
  ``gradguard.report()``);
- ``_pipeline``: where an event goes (a capture, a batch for the file or the console,
  the application's structlog) and the batches written off the call path;
- ``_sinks``: gradguard's own JSON-lines file and the console;
- ``_capture``: ``gradguard.testing.capture_events()``;
- ``_render``: event fields, JSON lines, console lines, timestamps;
- ``_cuda``: CUDA timing events, pooled, and the calls waiting for their device time;
- ``_prometheus`` and ``_otel``: exporters to metrics systems;
- ``_process``: the pid, host and rank every event carries.

Nothing a logger does can break the call it describes: any error while measuring or
emitting is swallowed, and reported once with a ``TelemetryWarning``.
"""

from __future__ import annotations

import contextvars
import os
import threading
import time

from .. import _config
from ._aggregate import AGGREGATES, report, stats
from ._capture import capture_events
from ._cuda import POOL, WAITING, Timing
from ._measure import Measure, Recorder, device_of, flush
from ._otel import OTEL
from ._pipeline import PIPELINE, WARNINGS, ReadyEvent, warn_once
from ._process import PROCESS
from ._prometheus import prometheus_collector
from ._render import CALL_EVENT, SCHEMA, CallRecord, timestamp

__all__ = [
    "CALL_EVENT",
    "SCHEMA",
    "CallRecord",
    "Measure",
    "Recorder",
    "Timing",
    "capture_events",
    "device_of",
    "emit_leak",
    "flush",
    "prometheus_collector",
    "report",
    "reset",
    "stats",
]

_timestamp = timestamp  # the name tests and older importers know


def emit_leak(target: str, call: int, receiver: str, message: str) -> None:
    """Count a leak for ``target`` and emit a ``gradguard.leak`` event; never raise."""
    try:
        settings = _config.current()
        if not settings.enabled:
            return
        AGGREGATES.target(target).leak()
        if _config.LOG_LEVELS["warning"] < _config.LOG_LEVELS[settings.level]:
            return
        batched = PIPELINE.batched(settings)
        if not PIPELINE.wants_events(batched):
            return
        rank = PROCESS.rank()
        fields = {
            "schema": SCHEMA,
            "timestamp": timestamp(time.time()),
            "level": "warning",
            "target": target,
            "call": call,
            "receiver": receiver,
            "message": message,
            "pid": PROCESS.pid,
            "host": PROCESS.host,
            "thread": threading.current_thread().name,
            "rank": rank.rank,
            "world_size": rank.world_size,
        }
        event = ReadyEvent("gradguard.leak", "warning", fields, contextvars.copy_context())
    except Exception as error:
        warn_once(error)
        return
    PIPELINE.submit(event, batched=batched)


def reset() -> None:
    """Write what waits, then forget counts, warnings, files and instruments (for tests)."""
    WAITING.drain(block=True)
    PIPELINE.reset()
    WAITING.reset()
    POOL.reset()
    OTEL.reset()
    AGGREGATES.reset()
    PROCESS.reset()
    WARNINGS.reset()
    _config.changed()  # recorders fetch their (new) aggregate


def _forked_child() -> None:
    # A forked worker (a DataLoader's, say) is another process: its own counts (the
    # parent reports its own), its own sample (settings are refreshed, which reseeds),
    # none of the parent's CUDA events.
    AGGREGATES.forked()
    POOL.reset()
    _config.changed()


_config.before_change.append(flush)
if hasattr(os, "register_at_fork"):  # not on every platform
    os.register_at_fork(after_in_child=_forked_child)
