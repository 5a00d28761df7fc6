"""Render an audit as a text table, Markdown, or JSON.

The JSON output is a stable contract for scripts and CI. Its shape, with
``schema`` bumped on any incompatible change (new keys may appear anytime)::

    {
      "schema": 1,
      "by": "target" | "rank" | "host" | "device",
      "files": [str, ...],                       # inputs after glob expansion; "-" is stdin
      "span": {"first": str | null,              # earliest ISO 8601 UTC timestamp seen
               "last": str | null,
               "seconds": float | null},
      "skipped": int,                            # lines not counted, all reasons
      "skipped_by_reason": {"not_json": int, "other_event": int, "invalid": int},
      "relative_accuracy": 0.01,                 # bound on percentile error, see _sketch
      "groups": [GROUP, ...],                    # sorted: int keys, then str keys, then null
      "totals": GROUP,                           # all groups together; "key" is null
      "compare": null | COMPARE,                 # with --compare
      "fail_on": null | FAIL_ON                  # with --fail-on
    }

    GROUP = {
      "key": str | int | null,                   # the --by field's value; null when absent
      "calls": int, "errors": int,
      "modes": {"inference": int, "no_grad": int},
      "fallbacks": int, "grad_calls": int, "leaks": int,
      "waste": int,                              # gradguard.waste events (gradguard scan)
      "wall_ms": STATS | null,                   # null when the group had no call
      "gpu_ms": STATS | null,                    # null when no call reported gpu_ms
      "mem_peak_bytes": STATS | null,            # integers; null when never reported
      "devices": [str, ...], "ranks": [int, ...] # sorted, distinct
    }
    STATS = {"count": int, "min": num, "p50": num, "p95": num, "p99": num, "max": num}
            # count, min and max exact; pNN within relative_accuracy of the value at
            # rank floor(NN/100 * (count - 1)) of the sorted values

    COMPARE = {
      "threshold": float,                        # relative: 0.1 is 10%
      "baseline": {"files": [...], "span": {...}, "skipped": int,
                   "groups": [GROUP, ...], "totals": GROUP},
      "groups": [{"key": ..., "status": "regressed" | "unchanged" | "new" | "vanished",
                  "wall_ms_p95": CHANGE, "mem_peak_bytes_max": CHANGE,
                  "flags": ["wall_ms.p95" | "mem_peak_bytes.max", ...]}, ...],
      "regressed": [key, ...], "new": [key, ...], "vanished": [key, ...]
    }
    CHANGE = {"baseline": num | null, "current": num | null,
              "change": float | null}            # relative; null if not comparable or from 0

    FAIL_ON = {"conditions": [str, ...], "failed": [str, ...],
               "details": {condition: sentence}, "exit_code": 0 | 1}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from gradguard._audit._summary import (
    Change,
    Comparison,
    FailOnResult,
    GroupKey,
    GroupSummary,
    Stats,
    Summary,
)

__all__ = ["JSON_SCHEMA_VERSION", "render", "to_json_dict"]

JSON_SCHEMA_VERSION = 1
FORMATS = ("table", "json", "markdown")


def render(
    fmt: str,
    summary: Summary,
    comparison: Comparison | None = None,
    fail_on: FailOnResult | None = None,
) -> str:
    """Render in ``fmt`` ("table", "json" or "markdown"); the text ends with a newline."""
    if fmt == "json":
        return json.dumps(to_json_dict(summary, comparison, fail_on), indent=2) + "\n"
    if fmt in ("table", "markdown"):
        return _Text(markdown=fmt == "markdown").report(summary, comparison, fail_on)
    msg = f"format must be one of {', '.join(FORMATS)}; got {fmt!r}"
    raise ValueError(msg)


# --- JSON ----------------------------------------------------------------------------------


def to_json_dict(
    summary: Summary, comparison: Comparison | None = None, fail_on: FailOnResult | None = None
) -> dict[str, Any]:
    """The JSON contract (see the module docstring) as plain Python objects."""
    out: dict[str, Any] = {
        "schema": JSON_SCHEMA_VERSION,
        "by": summary.by,
        "files": list(summary.files),
        "span": _span(summary),
        "skipped": summary.skipped,
        "skipped_by_reason": dict(summary.skipped_by_reason),
        "relative_accuracy": summary.relative_accuracy,
        "groups": [_group(g) for g in summary.groups],
        "totals": _group(summary.totals),
        "compare": None,
        "fail_on": None,
    }
    if comparison is not None:
        base = comparison.baseline
        out["compare"] = {
            "threshold": comparison.threshold,
            "baseline": {
                "files": list(base.files),
                "span": _span(base),
                "skipped": base.skipped,
                "groups": [_group(g) for g in base.groups],
                "totals": _group(base.totals),
            },
            "groups": [_change(c) for c in comparison.changes],
            "regressed": list(comparison.keys("regressed")),
            "new": list(comparison.keys("new")),
            "vanished": list(comparison.keys("vanished")),
        }
    if fail_on is not None:
        out["fail_on"] = {
            "conditions": list(fail_on.conditions),
            "failed": list(fail_on.failed),
            "details": dict(fail_on.details),
            "exit_code": fail_on.exit_code,
        }
    return out


def _span(summary: Summary) -> dict[str, Any]:
    return {"first": summary.first, "last": summary.last, "seconds": summary.span_seconds}


def _stats(stats: Stats | None, integer: bool = False) -> dict[str, Any] | None:
    if stats is None:
        return None
    values = {"min": stats.min, "p50": stats.p50, "p95": stats.p95, "p99": stats.p99,
              "max": stats.max}  # fmt: skip
    if integer:
        values = {k: round(v) for k, v in values.items()}
    return {"count": stats.count, **values}


def _group(g: GroupSummary) -> dict[str, Any]:
    return {
        "key": g.key,
        "calls": g.calls,
        "errors": g.errors,
        "modes": {"inference": g.inference, "no_grad": g.no_grad},
        "fallbacks": g.fallbacks,
        "grad_calls": g.grad_calls,
        "leaks": g.leaks,
        "waste": g.waste,
        "wall_ms": _stats(g.wall_ms),
        "gpu_ms": _stats(g.gpu_ms),
        "mem_peak_bytes": _stats(g.mem_peak_bytes, integer=True),
        "devices": list(g.devices),
        "ranks": list(g.ranks),
    }


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _change(c: Change) -> dict[str, Any]:
    def side(g: GroupSummary | None, measure: str) -> float | None:
        if g is None:
            return None
        if measure == "wall":
            return None if g.wall_ms is None else g.wall_ms.p95
        return None if g.mem_peak_bytes is None else g.mem_peak_bytes.max

    return {
        "key": c.key,
        "status": c.status,
        "wall_ms_p95": {
            "baseline": side(c.baseline, "wall"),
            "current": side(c.current, "wall"),
            "change": _finite(c.wall_p95_change),
        },
        "mem_peak_bytes_max": {
            "baseline": side(c.baseline, "mem"),
            "current": side(c.current, "mem"),
            "change": _finite(c.mem_max_change),
        },
        "flags": list(c.flags),
    }


# --- text: table and Markdown ----------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def _count(n: int) -> str:
    return f"{n:,}"


def _ms(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _bytes(x: float | None) -> str:
    if x is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(x) < 1024 or unit == "PiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    raise AssertionError  # pragma: no cover - the loop always returns


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{seconds:.3g}s"


def _ranges(ranks: Sequence[int]) -> str:
    """Compress sorted ints: [0, 1, 2, 5] -> '0-2,5'."""
    if not ranks:
        return "-"
    parts = []
    start = prev = ranks[0]
    for r in [*ranks[1:], None]:
        if r is not None and r == prev + 1:
            prev = r
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if r is not None:
            start = prev = r
    return ",".join(parts)


def _devices(devices: Sequence[str]) -> str:
    if not devices:
        return "-"
    if len(devices) <= 3:
        return ",".join(devices)
    return f"{','.join(devices[:2])},+{len(devices) - 2}"


def _key(key: GroupKey) -> str:
    return "(none)" if key is None else str(key)


def _pct(change: float | None) -> str:
    if change is None:
        return "-"
    if math.isinf(change):
        return "+inf%"
    return f"{change:+.1%}"


_COLUMNS = (
    "calls", "errors", "inference", "no_grad", "fallbacks", "grad", "leaks", "waste",
    "wall p50", "wall p95", "wall p99", "wall max", "gpu p50", "gpu p95", "gpu max",
    "mem p95", "mem max", "devices", "ranks",
)  # fmt: skip


def _get(stats: Stats | None, name: str) -> float | None:
    return None if stats is None else float(getattr(stats, name))


def _row(name: str, g: GroupSummary) -> list[str]:
    w, gpu, mem = g.wall_ms, g.gpu_ms, g.mem_peak_bytes
    return [
        name,
        _count(g.calls),
        _count(g.errors),
        _count(g.inference),
        _count(g.no_grad),
        _count(g.fallbacks),
        _count(g.grad_calls),
        _count(g.leaks),
        _count(g.waste),
        _ms(_get(w, "p50")),
        _ms(_get(w, "p95")),
        _ms(_get(w, "p99")),
        _ms(_get(w, "max")),
        _ms(_get(gpu, "p50")),
        _ms(_get(gpu, "p95")),
        _ms(_get(gpu, "max")),
        _bytes(_get(mem, "p95")),
        _bytes(_get(mem, "max")),
        _devices(g.devices),
        _ranges(g.ranks),
    ]


class _Text:
    """Builds the table or Markdown report; the two differ only in how a table is drawn."""

    def __init__(self, markdown: bool) -> None:
        self.markdown = markdown

    def table(self, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
        """Draw rows under a header: aligned columns, or a Markdown pipe table."""
        if self.markdown:
            aligns = ["--:" if _numeric(rows, i) else "---" for i in range(len(header))]
            return [_md_row(header), _md_row(aligns), *(_md_row(r) for r in rows)]
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        right = [_numeric(rows, i) for i in range(len(header))]

        def line(cells: Sequence[str]) -> str:
            padded = zip(cells, widths, right, strict=True)
            return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in padded).rstrip()

        return [line(header), *(line(r) for r in rows)]

    def heading(self, text: str) -> list[str]:
        """A section title."""
        return [f"## {text}", ""] if self.markdown else [text, "-" * len(text)]

    def report(
        self, summary: Summary, comparison: Comparison | None, fail_on: FailOnResult | None
    ) -> str:
        """The whole report: overview, per-group table, compare and fail-on sections."""
        t = summary.totals
        files = summary.files
        source = _plural(len(files), "file")
        reasons = ", ".join(f"{k} {v:,}" for k, v in summary.skipped_by_reason.items())
        bullet = "- " if self.markdown else ""
        out = ["# gradguard audit", ""] if self.markdown else []
        out += [
            f"{bullet}inputs: {source}, grouped by {summary.by}",
            f"{bullet}span: {summary.first or '-'} to {summary.last or '-'} "
            f"({_duration(summary.span_seconds)})",
            f"{bullet}events: {_plural(t.calls, 'call')}, {_plural(t.leaks, 'leak')}; "
            f"skipped {_plural(summary.skipped, 'line')} ({reasons})",
            f"{bullet}units: wall and gpu in ms; mem is mem_peak_bytes; percentiles within "
            f"{summary.relative_accuracy:.0%}",
            "",
        ]
        rows = [_row(_key(g.key), g) for g in summary.groups]
        rows.append(_row("TOTAL", t))
        out += self.table([summary.by, *_COLUMNS], rows)
        if comparison is not None:
            out += ["", *self._compare(comparison)]
        if fail_on is not None:
            out += ["", *self._fail_on(fail_on)]
        return "\n".join(out) + "\n"

    def _compare(self, comparison: Comparison) -> list[str]:
        base = comparison.baseline
        out = self.heading(
            f"compare with baseline ({_plural(len(base.files), 'file')}, "
            f"{_plural(base.totals.calls, 'call')}), threshold {comparison.threshold * 100:g}%"
        )
        rows = []
        for c in comparison.changes:
            b, n = c.baseline, c.current
            rows.append([
                _key(c.key),
                c.status.upper() if c.status == "regressed" else c.status,
                _ms(b.wall_ms.p95 if b and b.wall_ms else None),
                _ms(n.wall_ms.p95 if n and n.wall_ms else None),
                _pct(c.wall_p95_change) + (" !" if "wall_ms.p95" in c.flags else ""),
                _bytes(b.mem_peak_bytes.max if b and b.mem_peak_bytes else None),
                _bytes(n.mem_peak_bytes.max if n and n.mem_peak_bytes else None),
                _pct(c.mem_max_change) + (" !" if "mem_peak_bytes.max" in c.flags else ""),
            ])  # fmt: skip
        header = [base.by, "status", "wall p95 before", "after", "change",
                  "mem max before", "after", "change"]  # fmt: skip
        out += self.table(header, rows)
        counts = {s: len(comparison.keys(s)) for s in ("regressed", "new", "vanished")}
        out += ["", ", ".join(f"{v} {k}" for k, v in counts.items())]
        return out

    def _fail_on(self, result: FailOnResult) -> list[str]:
        out = self.heading(f"fail-on: {', '.join(result.conditions)}")
        if not result.failed:
            return [*out, "passed: none of the conditions was found"]
        bullet = "- " if self.markdown else "  "
        return [*out, "FAILED:", *(f"{bullet}{c}: {result.details[c]}" for c in result.failed)]


def _md_row(cells: Sequence[str]) -> str:
    """One Markdown table row; pipes inside cells are escaped."""
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _numeric(rows: Sequence[Sequence[str]], i: int) -> bool:
    if i == 0:  # the group key column, even when the keys are ranks
        return False
    # "-" (no value) fits either way; a column of nothing but "-" aligns right.
    return all(c[:1].isdigit() or c[:1] in "+-" for c in (r[i] for r in rows) if c != "-")
