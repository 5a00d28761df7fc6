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


class _Chunks(NamedTuple):
    """The JSON of a call line's fields that repeat from call to call, in three runs."""

    outcome: str  # level, target, kind, mode, fallback, status, then the "wall_ms" key
    where: str  # device and memory kind, then the "mem_before_bytes" key
    who: str  # pid, host, thread, rank, world size, grad_recorded, "training_modules"


class _Templates(dict[tuple[Any, ...], _Chunks]):
    """``templates[key]``: the JSON of every field of a call line that stays the same
    from call to call (target, kind, device, memory kind, thread, rank, world size, pid,
    host, and the outcome: status, mode, fallback, grad), rendered once per key, here."""

    def __missing__(self, key: tuple[Any, ...]) -> _Chunks:
        (target, kind, device, mem_kind, thread, rank, world_size, pid, host, ok,
         inference, fallback, grad) = key  # fmt: skip
        js = json.dumps
        chunks = _Chunks(
            f'"level":"{"info" if ok else "error"}","target":{js(target)},'
            f'"kind":{js(kind)},"mode":"{"inference" if inference else "no_grad"}",'
            f'"fallback":{js(bool(fallback))},"status":"{"ok" if ok else "error"}",'
            '"wall_ms":',
            f'"device":{js(device)},"mem_kind":{js(mem_kind)},"mem_before_bytes":',
            f'"pid":{js(pid)},"host":{js(host)},"thread":{js(thread)},"rank":{js(rank)},'
            f'"world_size":{js(world_size)},"grad_recorded":{js(bool(grad))},'
            '"training_modules":',
        )
        if len(self) >= 4096:  # bounded: threads named per task would grow it forever
            self.clear()
        self[key] = chunks
        return chunks


_TEMPLATES = _Templates()

# Short on purpose: "%" reads its template character by character, so the long runs
# that repeat (_Chunks) go in as arguments, copied whole.
_CALL_LINE = (
    '{"event":"gradguard.call","schema":1,"timestamp":"%s.%06dZ",%s%d.%06d,"gpu_ms":%s,'
    '%s%s,"mem_after_bytes":%s,"mem_peak_bytes":%s,"eval_switched":%d,"call":%d,%s%d}\n'
)
_CALL_LINE_ERROR = _CALL_LINE[:-2] + ',"error":%s}\n'


def call_line(record: CallRecord, pid: int, host: str) -> bytes:
    """The JSON line of a call event with nothing bound in its context.

    The same line ``render_line(with_context(...))`` gives, field for field: the fields
    that repeat from call to call are rendered once per target, thread and outcome
    (``_Templates``), and one short ``%`` formats the call's own figures, all integers
    but the start time, between them: a fraction of a dict through a JSON encoder, paid
    for every event written. ``wall_ms`` is written as the decimal of its nanoseconds
    (``0.123456``), which parses to the same float as ``wall_ns / 1e6``.
    """
    (target, kind, inference, fallback, error, wall_ns, wall, device, mem_kind, before,
     after, peak, switched, call, thread, rank, world_size, grad, training, _,
     gpu_ms) = record  # fmt: skip
    ok = error is None
    outcome, where, who = _TEMPLATES[
        target, kind, device, mem_kind, thread, rank, world_size, pid, host, ok, inference,
        fallback, grad,
    ]  # fmt: skip
    second = _floor(wall)
    stamp = _stamp if _stamp.second == second else _stamp_of(second)
    values = (
        stamp.text,
        (wall - second) * 1_000_000,
        outcome,
        wall_ns // 1_000_000,
        wall_ns % 1_000_000,
        "null" if gpu_ms is None else repr(gpu_ms),
        where,
        "null" if before is None else before,
        "null" if after is None else after,
        "null" if peak is None else peak,
        switched,
        call,
        who,
        training,
    )
    if ok:
        return (_CALL_LINE % values).encode()
    return (_CALL_LINE_ERROR % (*values, json.dumps(error))).encode()


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
