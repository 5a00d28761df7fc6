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
import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from gradguard._audit._summary import (
    Change,
    Comparison,
    FailOnResult,
    GroupKey,
    GroupSummary,
    Stats,
    Summary,
)

__all__ = [
    "COLUMNS",
    "COLUMN_NAMES",
    "DEFAULT_COLUMNS",
    "JSON_SCHEMA_VERSION",
    "Column",
    "clean",
    "compare_rows",
    "format_bytes",
    "render",
    "table_rows",
    "to_json_dict",
]

JSON_SCHEMA_VERSION = 1
FORMATS = ("table", "json", "markdown")


def render(
    fmt: str,
    summary: Summary,
    comparison: Comparison | None = None,
    fail_on: FailOnResult | None = None,
    *,
    columns: Sequence[str] | None = None,
) -> str:
    """Render in ``fmt`` ("table", "json" or "markdown"); the text ends with a newline.

    ``columns`` picks the table's columns by name (see :data:`COLUMN_NAMES`); by default
    the narrow set :data:`DEFAULT_COLUMNS`, less the columns with no value in any row.
    Control characters in names are escaped, so a log cannot forge a row or drive the
    terminal.
    """
    if fmt == "json":
        return json.dumps(to_json_dict(summary, comparison, fail_on), indent=2) + "\n"
    if fmt in ("table", "markdown"):
        text = _Text(markdown=fmt == "markdown", columns=columns)
        return text.report(summary, comparison, fail_on)
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


def format_bytes(x: float | None) -> str:
    """``x`` bytes in a unit that keeps it readable: "48 B", "12.0 KiB"; "-" for None."""
    if x is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(x) < 1024 or unit == "PiB":
            return f"{x:.0f} {unit}" if unit == "B" else f"{x:.1f} {unit}"
        x /= 1024
    raise AssertionError  # pragma: no cover - the loop always returns


_bytes = format_bytes


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
        return clean(",".join(devices))
    return clean(f"{','.join(devices[:2])},+{len(devices) - 2}")


def _key(key: GroupKey) -> str:
    return "(none)" if key is None else clean(str(key))


def _pct(change: float | None) -> str:
    if change is None:
        return "-"
    if math.isinf(change):
        return "+inf%"
    return f"{change:+.1%}"


class Column(NamedTuple):
    """One column of the per-group table: its ``--columns`` name, header and cell."""

    name: str
    header: str
    cell: Callable[[GroupSummary], str]


def _stat(measure: str, name: str, fmt: Callable[[float | None], str]) -> Callable[..., str]:
    def cell(g: GroupSummary) -> str:
        stats: Stats | None = getattr(g, measure)
        return fmt(None if stats is None else float(getattr(stats, name)))

    return cell


COLUMNS: tuple[Column, ...] = (
    Column("calls", "calls", lambda g: _count(g.calls)),
    Column("errors", "errors", lambda g: _count(g.errors)),
    Column("inference", "inference", lambda g: _count(g.inference)),
    Column("no_grad", "no_grad", lambda g: _count(g.no_grad)),
    Column("fallbacks", "fallbacks", lambda g: _count(g.fallbacks)),
    Column("grad", "grad", lambda g: _count(g.grad_calls)),
    Column("leaks", "leaks", lambda g: _count(g.leaks)),
    Column("wall_p50", "wall p50", _stat("wall_ms", "p50", _ms)),
    Column("wall_p95", "wall p95", _stat("wall_ms", "p95", _ms)),
    Column("wall_p99", "wall p99", _stat("wall_ms", "p99", _ms)),
    Column("wall_max", "wall max", _stat("wall_ms", "max", _ms)),
    Column("gpu_p50", "gpu p50", _stat("gpu_ms", "p50", _ms)),
    Column("gpu_p95", "gpu p95", _stat("gpu_ms", "p95", _ms)),
    Column("gpu_max", "gpu max", _stat("gpu_ms", "max", _ms)),
    Column("mem_p95", "mem p95", _stat("mem_peak_bytes", "p95", _bytes)),
    Column("mem_max", "mem max", _stat("mem_peak_bytes", "max", _bytes)),
    Column("devices", "devices", lambda g: _devices(g.devices)),
    Column("ranks", "ranks", lambda g: _ranges(g.ranks)),
)
"""Every column, in table order; ``--wide`` shows them all."""

COLUMN_NAMES = tuple(c.name for c in COLUMNS)

DEFAULT_COLUMNS = (
    "calls", "errors", "fallbacks", "grad", "leaks", "wall_p50", "wall_p95", "gpu_p95",
    "mem_max", "ranks",
)  # fmt: skip
"""The default table's columns, less those with no value in any row: under 120 characters
wide with counts below ten million (longer keys are shortened to 32 characters)."""

_KEY_WIDTH = 32  # longer keys are shortened in the middle in the default table


_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _control(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _ESCAPES:
        return _ESCAPES[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators: each would
# move the cursor, ring a bell, recolour the terminal or start a new table row.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: str) -> str:
    """``text`` with every control character written as an escape (``\\x1b``, ``\\n``)."""
    return _CONTROL.sub(_control, text)


def _shorten(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}~{text[len(text) - (width - 1 - head) :]}"


def _pick_columns(
    groups: Sequence[GroupSummary], names: Sequence[str] | None
) -> tuple[list[Column], bool]:
    """The columns to draw, and whether they are the default (empty ones dropped)."""
    by_name = {c.name: c for c in COLUMNS}
    if names is not None:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            msg = f"unknown column {unknown[0]!r}; choose from {','.join(COLUMN_NAMES)}"
            raise ValueError(msg)
        return [by_name[n] for n in names], False
    chosen = []
    for name in DEFAULT_COLUMNS:
        column = by_name[name]
        if any(column.cell(g) != "-" for g in groups):
            chosen.append(column)
    return chosen, True


def table_rows(
    summary: Summary, columns: Sequence[str] | None = None, *, shorten: bool = False
) -> tuple[list[str], list[list[str]]]:
    """The per-group table as a header and rows of cells, the totals last."""
    groups = [*summary.groups, summary.totals]
    chosen, default = _pick_columns(groups, columns)
    names = [_key(g.key) for g in summary.groups]
    if default and shorten:
        names = [_shorten(n, _KEY_WIDTH) for n in names]
    names.append("TOTAL")
    rows = [[n, *(c.cell(g) for c in chosen)] for n, g in zip(names, groups, strict=True)]
    return [summary.by, *(c.header for c in chosen)], rows


def compare_rows(comparison: Comparison) -> tuple[list[str], list[list[str]]]:
    """The comparison with the baseline as a header and rows of cells."""
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
    header = [comparison.baseline.by, "status", "wall p95 before", "after", "change",
              "mem max before", "after", "change"]  # fmt: skip
    return header, rows


class _Text:
    """Builds the table or Markdown report; the two differ only in how a table is drawn."""

    def __init__(self, *, markdown: bool, columns: Sequence[str] | None = None) -> None:
        self.markdown = markdown
        self.columns = columns

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
            f"{bullet}span: {clean(summary.first or '-')} to {clean(summary.last or '-')} "
            f"({_duration(summary.span_seconds)})",
            f"{bullet}events: {_plural(t.calls, 'call')}, {_plural(t.leaks, 'leak')}; "
            f"skipped {_plural(summary.skipped, 'line')} ({reasons})",
            f"{bullet}units: wall and gpu in ms; mem is mem_peak_bytes; percentiles within "
            f"{summary.relative_accuracy:.0%}",
            "",
        ]
        out += self.table(*table_rows(summary, self.columns, shorten=not self.markdown))
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
        out += self.table(*compare_rows(comparison))
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
