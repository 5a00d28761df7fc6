"""Rendering a scan's findings: a table, JSON, Markdown, and ``gradguard.waste`` events.

Each finding becomes one ``gradguard.waste`` event in a log file, whose ``target`` names
the module and the ``file:line`` of the call, so that ``gradguard audit`` groups it with
the calls of that place and counts it in its ``waste`` column.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ._findings import KINDS, ScanFinding

__all__ = ["FORMATS", "render", "target", "waste_events", "write_events"]

FORMATS = ("table", "json", "markdown")
JSON_SCHEMA_VERSION = 1


def target(finding: ScanFinding) -> str:
    """The audit's group for a finding: the module and the user's line."""
    return f"{finding.module} at {finding.where}"


def _size(n: int) -> str:
    return f"{n:,} B ({n / 2**20:.2f} MiB)"


def _summary_line(findings: Sequence[ScanFinding]) -> str:
    if not findings:
        return "gradguard scan: no unguarded inference found"
    counts = {k: sum(1 for f in findings if f.kind == k) for k in KINDS}
    parts = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    wasted = sum(f.bytes_total for f in findings)
    noun = "finding" if len(findings) == 1 else "findings"
    kept = f"{_size(wasted)} kept for backward in all"
    return f"gradguard scan: {len(findings)} {noun} ({parts}); {kept}"


def _rows(findings: Sequence[ScanFinding]) -> list[list[str]]:
    rows = []
    for f in findings:
        graph = f.kind == "graph_unused"
        rows.append(
            [
                f.kind,
                f.where,
                f.module,
                str(f.calls),
                _size(f.bytes_max) if graph else "-",
                _size(f.bytes_total) if graph else "-",
            ]
        )
    return rows


_HEADER = ["kind", "where", "module", "calls", "bytes per call (max)", "bytes in all"]


def _table(findings: Sequence[ScanFinding]) -> str:
    lines = [_summary_line(findings)]
    if findings:
        rows = [_HEADER, *_rows(findings)]
        widths = [max(len(r[i]) for r in rows) for i in range(len(_HEADER))]
        right = {3, 4, 5}
        lines.append("")
        for row in rows:
            cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in
                     enumerate(zip(row, widths, strict=True))]  # fmt: skip
            lines.append("  ".join(cells).rstrip())
        lines.append("")
        for n, f in enumerate(findings, 1):
            lines.append(f"{n}. {f.where} ({f.kind}): {f.message}")
    return "\n".join(lines) + "\n"


def _markdown(findings: Sequence[ScanFinding]) -> str:
    lines = [f"**{_summary_line(findings)}**"]
    if findings:
        lines += ["", "| # | " + " | ".join(_HEADER) + " |", "|---" * (len(_HEADER) + 1) + "|"]
        for n, row in enumerate(_rows(findings), 1):
            row[1] = f"`{row[1]}`"
            row[2] = f"`{row[2]}`"
            lines.append(f"| {n} | " + " | ".join(row) + " |")
        lines.append("")
        lines += [f"{n}. `{f.where}`: {f.message}" for n, f in enumerate(findings, 1)]
    return "\n".join(lines) + "\n"


def to_json_dict(findings: Sequence[ScanFinding]) -> dict[str, Any]:
    """The JSON form: ``{"schema": 1, "findings": [{kind, where, module, calls,
    bytes_max, bytes_total, message, label}, ...]}``, most bytes first."""
    return {"schema": JSON_SCHEMA_VERSION, "findings": [f._asdict() for f in findings]}


def render(fmt: str, findings: Sequence[ScanFinding]) -> str:
    """The report in ``fmt`` (one of ``FORMATS``)."""
    if fmt == "json":
        return json.dumps(to_json_dict(findings), indent=2) + "\n"
    if fmt == "markdown":
        return _markdown(findings)
    if fmt == "table":
        return _table(findings)
    msg = f"format must be one of {', '.join(FORMATS)}; got {fmt!r}"
    raise ValueError(msg)


def _rank() -> int | None:
    value = os.environ.get("RANK")
    return int(value) if value is not None and value.isdigit() else None


def waste_events(findings: Sequence[ScanFinding]) -> list[dict[str, Any]]:
    """One ``gradguard.waste`` event per finding."""
    now = datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    common = {
        "schema": 1,
        "timestamp": now,
        "level": "warning",
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "thread": threading.current_thread().name,
        "rank": _rank(),
    }
    return [
        {
            "event": "gradguard.waste",
            **common,
            "target": target(f),
            "kind": f.kind,
            "where": f.where,
            "module": f.module,
            "calls": f.calls,
            "bytes_max": f.bytes_max,
            "bytes_total": f.bytes_total,
            "message": f.message,
            "label": f.label,
        }
        for f in findings
    ]


def write_events(path: str, findings: Sequence[ScanFinding]) -> None:
    """Append the findings' events to ``path`` as JSON lines."""
    with open(path, "a", encoding="utf-8") as file:
        for event in waste_events(findings):
            file.write(json.dumps(event) + "\n")
