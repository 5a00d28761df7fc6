"""Turning what a call captured into an event: the fields, a JSON line, a console line.

All of it runs off the call path, when a batch is written (or at once for a capture or
the application's structlog): the call itself only captures a ``CallRecord``.
"""

from __future__ import annotations

import contextvars
import json
import math
import time
from typing import Any, NamedTuple

import structlog

__all__ = [
    "CALL_EVENT",
    "SCHEMA",
    "CallRecord",
    "bound",
    "call_fields",
    "call_line",
    "console_line",
    "render_line",
    "timestamp",
]

SCHEMA = 1
CALL_EVENT = "gradguard.call"


class CallRecord(NamedTuple):
    """The raw figures of one finished call, as the call path hands them off."""

    target: str
    kind: str
    inference: bool
    fallback: bool
    error: str | None
    wall_ns: int
    wall: float  # time.time() at the call's start
    device: str | None
    mem_kind: str | None
    mem_before: int | None
    mem_after: int | None
    mem_peak: int | None
    switched: int
    call: int
    thread: str
    rank: int | None
    world_size: int | None
    grad_recorded: bool
    training: int
    context: contextvars.Context
    gpu_ms: float | None = None


def call_fields(record: CallRecord, pid: int, host: str) -> dict[str, Any]:
    """The ``gradguard.call`` event's fields (schema 1), in the schema's order."""
    error = record.error
    fields: dict[str, Any] = {
        "schema": SCHEMA,
        "timestamp": timestamp(record.wall),
        "level": "info" if error is None else "error",
        "target": record.target,
        "kind": record.kind,
        "mode": "inference" if record.inference else "no_grad",
        "fallback": record.fallback,
        "status": "ok" if error is None else "error",
        "wall_ms": record.wall_ns / 1e6,
        "gpu_ms": record.gpu_ms,
        "device": record.device,
        "mem_kind": record.mem_kind,
        "mem_before_bytes": record.mem_before,
        "mem_after_bytes": record.mem_after,
        "mem_peak_bytes": record.mem_peak,
        "eval_switched": record.switched,
        "call": record.call,
        "pid": pid,
        "host": host,
        "thread": record.thread,
        "rank": record.rank,
        "world_size": record.world_size,
        "grad_recorded": record.grad_recorded,
        "training_modules": record.training,
    }
    if error is not None:
        fields["error"] = error
    return fields


_CALL_LINE = (
    '{"event":"gradguard.call","schema":1,"timestamp":"%s.%06dZ","level":"%s","target":%s,'
    '"kind":%s,"mode":"%s","fallback":%s,"status":"%s","wall_ms":%s,"gpu_ms":%s,'
    '"device":%s,"mem_kind":%s,"mem_before_bytes":%s,"mem_after_bytes":%s,'
    '"mem_peak_bytes":%s,"eval_switched":%d,"call":%d,"pid":%d,"host":%s,"thread":%s,'
    '"rank":%s,"world_size":%s,"grad_recorded":%s,"training_modules":%d%s}\n'
)


class _JsonStrings(dict[Any, str]):
    """``strings[value]``: ``value`` as JSON (a string, or null for None), kept, since
    targets, kinds, devices, hosts and threads repeat; a hit is one C-level look-up."""

    def __missing__(self, value: str | None) -> str:
        text = json.dumps(value)
        if len(self) < 4096:
            self[value] = text
        return text


_JSON_STRINGS = _JsonStrings()


def call_line(record: CallRecord, pid: int, host: str) -> bytes:
    """The JSON line of a call event with nothing bound in its context.

    The same line ``render_line(with_context(...))`` gives, field for field, formatted
    with one ``%`` of a template instead of a dict through a JSON encoder, every value
    taken from one unpacking of the record: less than half the cost, paid for every
    event written. (``%s`` of a float is its ``repr``: valid JSON for a finite float.)
    """
    (target, kind, inference, fallback, error, wall_ns, wall, device, mem_kind, before,
     after, peak, switched, call, thread, rank, world_size, grad, training, _,
     gpu_ms) = record  # fmt: skip
    js = _JSON_STRINGS
    ok = error is None
    second = _floor(wall)
    stamp = _stamp if _stamp.second == second else _stamp_of(second)
    return (
        _CALL_LINE
        % (
            stamp.text,
            (wall - second) * 1_000_000,
            "info" if ok else "error",
            js[target],
            js[kind],
            "inference" if inference else "no_grad",
            "true" if fallback else "false",
            "ok" if ok else "error",
            wall_ns / 1e6,
            "null" if gpu_ms is None else gpu_ms,
            js[device],
            js[mem_kind],
            "null" if before is None else before,
            "null" if after is None else after,
            "null" if peak is None else peak,
            switched,
            call,
            pid,
            js[host],
            js[thread],
            "null" if rank is None else rank,
            "null" if world_size is None else world_size,
            "true" if grad else "false",
            training,
            "" if ok else ',"error":' + json.dumps(error),
        )
    ).encode()


def bound(context: contextvars.Context) -> dict[str, Any]:
    """What the application bound with ``structlog.contextvars`` in ``context``."""
    return context.run(structlog.contextvars.get_contextvars) if len(context) else {}


def with_context(
    context: contextvars.Context, event: str, fields: dict[str, Any]
) -> dict[str, Any]:
    """``{"event": ..., **bound, **fields}``: what the application bound with
    ``structlog.contextvars`` in the call's context, then the event's own fields."""
    return {"event": event, **bound(context), **fields}


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


render_line = _line_renderer()


def console_line(event: dict[str, Any]) -> str:
    """A line for people watching calls scroll by: ``timestamp event key=value ...``."""
    head = f"{event.get('timestamp', '')} {event.get('event', '')}"
    skip = ("timestamp", "event", "schema")
    rest = " ".join(f"{k}={v}" for k, v in event.items() if k not in skip and v is not None)
    return f"{head} {rest}\n"


class _Stamp(NamedTuple):
    second: int
    text: str


_stamp = _Stamp(0, "")
_floor = math.floor


def _stamp_of(second: int) -> _Stamp:
    global _stamp
    _stamp = _Stamp(second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    return _stamp


def timestamp(now: float) -> str:
    """ISO 8601 UTC with microseconds; the date and time of day are formatted once a second."""
    second = _floor(now)
    cached = _stamp if _stamp.second == second else _stamp_of(second)
    return "%s.%06dZ" % (cached.text, (now - second) * 1_000_000)  # noqa: UP031 - fastest
