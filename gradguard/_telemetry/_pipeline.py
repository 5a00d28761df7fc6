"""From a finished call to its destination: capture, batch, write; never raise, never block.

The call path hands a ``CallRecord`` (or a ready leak event) to ``PIPELINE.submit``.
Where it goes is decided there, in this order:

1. ``gradguard.testing.capture_events()`` is open: into its list, at once.
2. ``configure(log_file=...)`` or ``configure(console=True)``: into a bounded batch,
   rendered and written off the call path (below).
3. The application configured structlog (``structlog.is_configured()``): through
   ``structlog.get_logger("gradguard")`` at once, so its processors, its context and its
   test helpers (``structlog.testing.capture_logs``) see the event when the call ends.
4. Nothing configured: nowhere. The call was still counted into the aggregates.

**Batches.** The calling thread appends to a list (one C call, atomic under the GIL) and
writes the batch itself once it holds ``BATCH`` events, if no other thread is writing
(it never waits for one). A one-shot timer thread, alive only while events wait, writes
what is left within ``MAX_DELAY`` seconds, so ``tail -f`` keeps up; it is stopped before
``fork()`` so a forking process (DataLoader workers) has no extra thread. Batches are
also written at ``gradguard.flush()``, at interpreter exit, when a ``multiprocessing``
worker ends (its exit skips ``atexit``), before ``fork()`` (the child starts empty) and
when ``configure()`` changes the settings. When ``QUEUE_LIMIT`` events wait (a writer
stuck on a slow disk), later events are dropped, counted and reported once.
"""

from __future__ import annotations

import atexit
import contextvars
import os
import threading
import warnings
from typing import Any, NamedTuple

import structlog

from .. import _config
from .._errors import TelemetryWarning
from .._stack import user_stacklevel
from ._process import PROCESS
from ._render import (
    CALL_EVENT,
    CallRecord,
    bound,
    call_fields,
    call_line,
    console_line,
    render_line,
    with_context,
)
from ._sinks import ConsoleSink, FileSink

__all__ = [
    "PIPELINE",
    "Pipeline",
    "ReadyEvent",
    "warn_once",
]

BATCH = 256
MAX_DELAY = 0.5  # seconds an event may wait before the timer writes it
QUEUE_LIMIT = 100_000

_CHECK_LOGGING = (
    "Check the log_file (gradguard.configure) or the structlog configuration; "
    "gradguard.configure(enabled=False) turns logging off."
)


class ReadyEvent(NamedTuple):
    """An event other than a call's (a leak, say), its fields already built."""

    event: str
    level: str
    fields: dict[str, Any]
    context: contextvars.Context


class _Warnings:
    """The one ``TelemetryWarning`` per process about logging that failed."""

    __slots__ = ("given",)

    def __init__(self) -> None:
        self.given = False

    def reset(self) -> None:
        self.given = False

    def warn(self, error: BaseException, what_to_do: str = _CHECK_LOGGING) -> None:
        if self.given:
            return
        self.given = True
        msg = (
            f"gradguard could not log a call ({type(error).__name__}: {error}); the call "
            f"itself went on. Further logging errors are not reported. {what_to_do}"
        )
        warnings.warn(msg, TelemetryWarning, stacklevel=user_stacklevel())


WARNINGS = _Warnings()
warn_once = WARNINGS.warn


class Pipeline:
    """The batch of events waiting to be written, the sink they go to, and the counts."""

    def __init__(self) -> None:
        self.captures: list[list[dict[str, Any]]] = []
        self._logger = structlog.get_logger("gradguard")
        self._is_configured = structlog.is_configured
        self._init_process_state()
        self.dropped = 0  # events lost since the process started: queue full, disk refused
        self._unreported = 0  # dropped events not yet told in a gradguard.dropped event
        self._drop_warned = False

    def _init_process_state(self) -> None:
        self.queue: list[Any] = []
        self._write_lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._timer_lock = threading.Lock()
        # Open files by the rank their events were made under (None: not known yet).
        self._sinks: dict[int | None, FileSink | ConsoleSink] = {}
        self._exit_hooked_pid = -1

    def reset(self) -> None:
        """Write what waits, close the file, forget counts and warnings (for tests)."""
        self.flush()
        self._stop_timer()
        self._close_sinks()
        self.dropped = self._unreported = 0
        self._drop_warned = False
        WARNINGS.reset()

    # -- where events go -----------------------------------------------------------------

    def batched(self, settings: _config.Settings) -> bool:
        """Whether these settings send events to gradguard's own file or the console."""
        return bool(settings.log_file or settings.console)

    def wants_events(self, batched: bool) -> bool:
        """Whether an event built now would go anywhere (the call path asks)."""
        return batched or bool(self.captures) or self._is_configured()

    def submit(self, item: CallRecord | ReadyEvent, *, batched: bool) -> None:
        """Hand one finished event on; never raises."""
        try:
            if self.captures:
                event, level, fields, context = _expand(item)
                self.captures[-1].append(with_context(context, event, fields))
            elif batched:
                queue = self.queue
                if len(queue) >= QUEUE_LIMIT:
                    self._drop(1)
                    return
                queue.append(item)
                if len(queue) >= BATCH:
                    self.write(block=False)
                elif self._timer is None:
                    self._arm()
            elif self._is_configured():
                event, level, fields, context = _expand(item)
                context.run(getattr(self._logger, level), event, **fields)
        except Exception as error:
            warn_once(error)

    # -- writing batches -----------------------------------------------------------------

    def write(self, *, block: bool = True) -> None:
        """Write the waiting events; without ``block``, only if no other thread is."""
        if not self._write_lock.acquire(blocking=block):
            return
        try:
            self._write_locked()
        finally:
            self._write_lock.release()

    def flush(self) -> None:
        """Write every waiting event now."""
        if self.queue or self._unreported:
            self.write()

    def _write_locked(self) -> None:
        queue = self.queue
        # Take exactly what is there: events appended meanwhile wait for the next batch.
        count = len(queue)
        items = queue[:count]
        del queue[:count]
        if not items and not self._unreported:
            return
        settings = _config.current()
        template = settings.log_file or ("<console>" if settings.console else None)
        if template is None:
            # configure() turned the file and the console off after these were queued:
            # they go where events go now (the application's structlog, or nowhere).
            for item in items:
                self.submit(item, batched=False)
            return
        console = template == "<console>"
        batches: dict[int | None, list[bytes]] = {}
        if self._unreported:
            batches[None] = [self._dropped_line(console)]
        pid, host = PROCESS.pid, PROCESS.host
        lines_of = batches.get
        for item in items:
            try:
                # A call with nothing bound in its context (len() of an empty Context is
                # 0: structlog's contextvars are not even looked up): the templated line.
                if type(item) is CallRecord and not console and not (
                    len(item.context) and bound(item.context)
                ):
                    lines = lines_of(item.rank)
                    if lines is None:
                        lines = batches[item.rank] = []
                    lines.append(call_line(item, pid, host))
                    continue
                event, _, fields, context = _expand(item)
                merged = with_context(context, event, fields)
                line = console_line(merged).encode() if console else render_line(merged)
                batches.setdefault(fields.get("rank"), []).append(line)
            except Exception as error:
                self._drop(1, report=False)
                warn_once(error)
        for rank, lines in batches.items():
            try:
                self._sink(template, rank).write(lines)
            except Exception as error:
                self._drop(getattr(error, "lost", len(lines)), report=False)
                warn_once(error)

    def _sink(self, template: str, rank: int | None) -> FileSink | ConsoleSink:
        """The open file for events made under ``rank``; the files of an older
        ``log_file``, or of the parent process, are closed first."""
        sinks = self._sinks
        sink = sinks.get(rank)
        if sink is not None and not sink.stale(template):
            return sink
        if any(s.stale(template) for s in sinks.values()):
            self._close_sinks()
        sink = sinks[rank] = ConsoleSink() if template == "<console>" else FileSink(template, rank)
        return sink

    def _close_sinks(self) -> None:
        # Every write is made under the write lock (or before any thread is writing):
        # no other thread is using these.
        sinks, self._sinks = self._sinks, {}
        for sink in sinks.values():
            if getattr(sink, "pid", PROCESS.pid) == PROCESS.pid:  # a parent's: not ours
                sink.close()

    def _dropped_line(self, console: bool) -> bytes:
        count, self._unreported = self._unreported, 0
        fields = {"event": "gradguard.dropped", "schema": 1, "dropped": count,
                  "pid": PROCESS.pid, "host": PROCESS.host}  # fmt: skip
        return console_line(fields).encode() if console else render_line(fields)

    def _drop(self, count: int, *, report: bool = True) -> None:
        if count <= 0:
            return
        self.dropped += count
        self._unreported += count
        if report and not self._drop_warned:
            self._drop_warned = True
            msg = (
                f"gradguard dropped {count} event(s): {QUEUE_LIMIT} were waiting to be "
                "written. The calls went on; gradguard_events_dropped_total and a "
                "'gradguard.dropped' line count every loss. Log less (sample=) or write "
                "to a faster disk. Reported once per process."
            )
            warnings.warn(msg, TelemetryWarning, stacklevel=user_stacklevel())

    # -- the timer, exit and fork ----------------------------------------------------------

    def _arm(self) -> None:
        with self._timer_lock:
            if self._timer is not None:
                return
            self._hook_exit()
            timer = threading.Timer(MAX_DELAY, self._tick)
            timer.daemon = True
            timer.name = "gradguard-writer"
            self._timer = timer
            timer.start()

    def _tick(self) -> None:
        with self._timer_lock:
            self._timer = None
        self.write()
        if self.queue:
            self._arm()

    def _stop_timer(self) -> None:
        with self._timer_lock:
            timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.cancel()
            timer.join(1.0)

    def _hook_exit(self) -> None:
        """Make sure this process writes its last batch when it ends."""
        pid = PROCESS.pid
        if self._exit_hooked_pid == pid:
            return
        self._exit_hooked_pid = pid
        atexit.register(self.flush)
        import multiprocessing.util

        # A multiprocessing worker ends through os._exit after running its finalizers,
        # never through atexit; one registered in the worker itself runs then.
        multiprocessing.util.Finalize(None, self.flush, exitpriority=100)

    def before_fork(self) -> None:
        """The parent writes what waits and stops its timer: the child starts empty."""
        try:
            self._stop_timer()
            self.flush()
        except Exception as error:
            warn_once(error)

    def after_fork_in_parent(self) -> None:
        if self.queue:
            self._arm()

    def after_fork_in_child(self) -> None:
        PROCESS.forked()
        self._init_process_state()  # fresh locks: a parent's thread may have held them


def _expand(item: CallRecord | ReadyEvent) -> tuple[str, str, dict[str, Any], contextvars.Context]:
    if type(item) is CallRecord:
        fields = call_fields(item, PROCESS.pid, PROCESS.host)
        return CALL_EVENT, fields["level"], fields, item.context
    return item  # type: ignore[return-value]


PIPELINE = Pipeline()


if hasattr(os, "register_at_fork"):  # not on every platform (Windows, some embedders)
    os.register_at_fork(
        before=PIPELINE.before_fork,
        after_in_parent=PIPELINE.after_fork_in_parent,
        after_in_child=PIPELINE.after_fork_in_child,
    )
