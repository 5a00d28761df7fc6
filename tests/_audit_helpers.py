"""Build gradguard events and log files for the audit tests."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_BASE_CALL: dict[str, Any] = {
    "event": "gradguard.call",
    "schema": 1,
    "timestamp": "2026-11-27T10:00:00.000000Z",
    "level": "info",
    "target": "model.forward",
    "kind": "module",
    "mode": "inference",
    "fallback": False,
    "status": "ok",
    "wall_ms": 1.0,
    "gpu_ms": None,
    "device": "cpu",
    "mem_kind": "rss",
    "mem_before_bytes": 1000,
    "mem_after_bytes": 1000,
    "mem_peak_bytes": 1000,
    "eval_switched": 0,
    "call": 1,
    "pid": 4242,
    "host": "node-0",
    "thread": "MainThread",
    "rank": None,
    "world_size": None,
    "grad_recorded": False,
    "training_modules": 0,
}


def call(**fields: Any) -> dict[str, Any]:
    """A valid ``gradguard.call`` event with ``fields`` overriding the defaults."""
    event = dict(_BASE_CALL)
    event.update(fields)
    if event["status"] == "error" and "error" not in fields:
        event["error"] = "RuntimeError: boom"
    return event


def leak(target: str = "model.forward", **fields: Any) -> dict[str, Any]:
    """A valid ``gradguard.leak`` event."""
    event: dict[str, Any] = {
        "event": "gradguard.leak",
        "schema": 1,
        "timestamp": "2026-11-27T10:00:00.000000Z",
        "target": target,
        "pid": 4242,
        "host": "node-0",
    }
    event.update(fields)
    return event


def timestamp(second: int) -> str:
    """An ISO 8601 UTC timestamp ``second`` seconds after 2026-11-27T10:00:00Z."""
    minutes, seconds = divmod(second, 60)
    hours, minutes = divmod(minutes, 60)
    return f"2026-11-27T{10 + hours:02d}:{minutes:02d}:{seconds:02d}.000000Z"


def lines(events: Iterable[dict[str, Any] | str | bytes]) -> bytes:
    """Serialise events (dicts as JSON, str/bytes verbatim) as JSON lines."""
    out = []
    for event in events:
        if isinstance(event, dict):
            out.append(json.dumps(event).encode())
        elif isinstance(event, str):
            out.append(event.encode())
        else:
            out.append(event)
    return b"".join(line + b"\n" for line in out)


def write_log(path: Path, events: Iterable[dict[str, Any] | str | bytes]) -> Path:
    """Write ``events`` to ``path`` as JSON lines, gzip-compressed if it ends in .gz."""
    data = lines(events)
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def random_calls(
    n: int, seed: int = 0, targets: tuple[str, ...] = ("a", "b", "c")
) -> Iterator[dict[str, Any]]:
    """``n`` varied, valid call events (lognormal latencies, several ranks/devices)."""
    rng = random.Random(seed)
    for i in range(n):
        rank = rng.randrange(2)
        yield call(
            target=rng.choice(targets),
            timestamp=timestamp(i),
            wall_ms=rng.lognormvariate(1.0, 1.0),
            gpu_ms=rng.lognormvariate(0.5, 0.5) if rank == 0 else None,
            mem_peak_bytes=rng.randrange(1, 10**9),
            device=f"cuda:{rank}",
            rank=rank,
            host=f"node-{rank}",
            call=i + 1,
        )
