"""``gradguard audit --format html``: one self-contained report with charts.

The charts are drawn by matplotlib (the ``gradguard[report]`` extra) as SVG and written
into the page itself, with the styles: the file needs no network, no script and no font
of its own, so it opens from an email attachment or a CI artifact. There is no
JavaScript at all. Per group: the latency distribution, p50 and p95 over time, errors,
fallbacks, grad calls and leaks over time, and peak memory over time; then the
``--compare`` view when a baseline was given, and the table.

Only ``gradguard audit --format html`` imports this module; the rest of the audit never
imports matplotlib.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from gradguard._audit._render import (
    clean,
    compare_rows,
    format_bytes,
    table_rows,
)
from gradguard._audit._summary import (
    Collector,
    Comparison,
    FailOnResult,
    GroupKey,
    GroupSummary,
    Summary,
)
from gradguard._audit._timeline import Bin, Timeline

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["MAX_CHARTED_GROUPS", "check_available", "render_html"]

MAX_CHARTED_GROUPS = 12
"""Groups with charts, by number of calls; the table lists every group."""

_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; color: #1b1f24; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em;
     border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
ul.facts { padding-left: 1.2em; color: #444; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr));
          gap: 1em; }
.chart { max-width: 720px; } .chart svg { width: 100%; height: auto; }
table { border-collapse: collapse; font-size: .9em; margin: 1em 0; }
th, td { border: 1px solid #d0d7de; padding: .25em .6em; text-align: right;
         font-variant-numeric: tabular-nums; }
th:first-child, td:first-child { text-align: left; }
tr.total td { font-weight: bold; } tr.regressed td { background: #ffebe9; }
.failed { color: #cf222e; font-weight: bold; } .passed { color: #1a7f37; }
.note { color: #57606a; font-size: .9em; }
"""


def check_available() -> str | None:
    """The problem, when the report cannot be drawn here; None when it can."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            "--format html draws its charts with matplotlib, which is not installed: "
            "pip install 'gradguard[report]'"
        )
    return None


def render_html(
    collector: Collector,
    timeline: Timeline,
    comparison: Comparison | None = None,
    fail_on: FailOnResult | None = None,
    *,
    files: Sequence[str] = (),
    columns: Sequence[str] | None = None,
) -> str:
    """The whole report as one HTML document."""
    import matplotlib

    summary = collector.summary(files)
    bins = timeline.bins()
    # Text stays text in the SVG (smaller, searchable); the fonts are the reader's own.
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        body = [_overview(summary, fail_on)]
        charted = sorted(summary.groups, key=lambda g: -(g.calls + g.leaks))
        body.append(_charts(collector, summary, bins, charted[:MAX_CHARTED_GROUPS]))
        if len(charted) > MAX_CHARTED_GROUPS:
            body.append(
                f'<p class="note">Charts for the {MAX_CHARTED_GROUPS} groups with the most '
                f"calls; the table below lists all {len(charted)}.</p>"
            )
        if comparison is not None:
            body.append(_compare(comparison))
        header, rows = table_rows(summary, columns)
        body.append(f"<h2>Table</h2>\n{_table(header, rows, total=True)}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        "<title>gradguard audit</title>\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<style>{_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _e(text: str) -> str:
    return html.escape(clean(text))


def _key(key: GroupKey) -> str:
    return "(none)" if key is None else str(key)


def _overview(summary: Summary, fail_on: FailOnResult | None) -> str:
    t = summary.totals
    reasons = ", ".join(f"{k} {v:,}" for k, v in summary.skipped_by_reason.items())
    span = f"{summary.first or '-'} to {summary.last or '-'}"
    facts = [
        f"inputs: {len(summary.files):,} file(s), grouped by {summary.by}",
        f"span: {span}",
        f"events: {t.calls:,} calls, {t.errors:,} errors, {t.fallbacks:,} fallbacks, "
        f"{t.grad_calls:,} grad calls, {t.leaks:,} leaks",
        f"skipped: {summary.skipped:,} lines ({reasons})",
        f"percentiles within {summary.relative_accuracy:.0%}; wall and gpu in ms",
    ]
    out = ["<h1>gradguard audit</h1>", '<ul class="facts">']
    out += [f"<li>{_e(f)}</li>" for f in facts]
    out.append("</ul>")
    if fail_on is not None:
        if fail_on.failed:
            items = "".join(f"<li>{_e(f'{c}: {fail_on.details[c]}')}</li>" for c in fail_on.failed)
            out.append(f'<p class="failed">fail-on FAILED</p><ul>{items}</ul>')
        else:
            conditions = ", ".join(fail_on.conditions)
            out.append(f'<p class="passed">fail-on passed: none of {_e(conditions)} found</p>')
    return "\n".join(out)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, total: bool = False) -> str:
    out = ["<table>", "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for i, row in enumerate(rows):
        classes = []
        if total and i == len(rows) - 1:
            classes.append("total")
        if len(row) > 1 and row[1] == "REGRESSED":
            classes.append("regressed")
        attr = f' class="{" ".join(classes)}"' if classes else ""
        out.append(f"<tr{attr}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


# --- charts --------------------------------------------------------------------------------


def _svg(draw: Callable[[Axes], None], title: str) -> str:
    from matplotlib.figure import Figure

    # A Figure without pyplot: no global state, no GUI backend.
    figure = Figure(figsize=(6.4, 3.0), layout="constrained")
    axes = figure.subplots()
    axes.set_title(title, loc="left", fontsize=10)
    axes.grid(True, alpha=0.3)
    draw(axes)
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    text = buffer.getvalue()
    # The page needs only the drawing: not the XML prologue, nor the RDF metadata block.
    text = _METADATA.sub("", text[text.index("<svg") :])
    return f'<div class="chart">{text}</div>'


def _series(bins: Sequence[Bin], key: GroupKey) -> list[tuple[Any, GroupSummary]]:
    points = []
    for b in bins:
        g = b.summary.group(key)
        if g is not None:
            points.append((b.start, g))
    return points


def _distribution(buckets: list[tuple[float, float, int]]) -> Callable[[Axes], None]:
    def draw(ax: Axes) -> None:
        positive = [(lo, hi, n) for lo, hi, n in buckets if lo > 0]
        if not positive:
            ax.text(0.5, 0.5, "no positive wall times", ha="center", transform=ax.transAxes)
            return
        lo, hi = positive[0][0], positive[-1][1]
        # About 40 bars between the fastest and the slowest call, on a log scale.
        if hi < lo * 1.5:  # one or a few close values: a bar in the middle of a readable axis
            lo, hi = lo / 1.5, hi * 1.5
        edges = [lo * (hi / lo) ** (i / 40) for i in range(41)]
        counts = [0] * (len(edges) - 1)
        for b_lo, b_hi, n in positive:
            middle = math.sqrt(b_lo * b_hi)
            i = max(0, min(len(counts) - 1, _bisect(edges, middle) - 1))
            counts[i] += n
        ax.stairs(counts, edges, fill=True, alpha=0.7)
        ax.set_xscale("log")
        ax.set_xlabel("wall time per call, ms")
        ax.set_ylabel("calls")

    return draw


def _bisect(edges: Sequence[float], value: float) -> int:
    from bisect import bisect_right

    return bisect_right(edges, value)


def _untimed(ax: Axes, points: Sequence[Any], what: str) -> bool:
    """Say so on the chart when there is nothing to draw over time."""
    if points:
        return False
    ax.text(0.5, 0.5, f"no {what} with a valid timestamp", ha="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    return True


def _latency(points: list[tuple[Any, GroupSummary]]) -> Callable[[Axes], None]:
    def draw(ax: Axes) -> None:
        timed = [(t, g.wall_ms) for t, g in points if g.wall_ms is not None]
        if _untimed(ax, timed, "calls"):
            return
        times = [t for t, _ in timed]
        ax.plot(times, [w.p50 for _, w in timed], marker=".", label="p50")
        ax.plot(times, [w.p95 for _, w in timed], marker=".", label="p95")
        ax.set_ylabel("wall ms")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left")
        _time_axis(ax)

    return draw


def _counts(points: list[tuple[Any, GroupSummary]]) -> Callable[[Axes], None]:
    def draw(ax: Axes) -> None:
        if _untimed(ax, points, "events"):
            return
        times = [t for t, _ in points]
        # Distinct dashes: equal counts (errors that also fell back) would hide a line.
        for label, get, style in (
            ("errors", lambda g: g.errors, "-"),
            ("fallbacks", lambda g: g.fallbacks, "--"),
            ("grad calls", lambda g: g.grad_calls, "-."),
            ("leaks", lambda g: g.leaks, ":"),
        ):
            ax.plot(times, [get(g) for _, g in points], style, marker=".", label=label)  # type: ignore[no-untyped-call,unused-ignore]
        ax.set_ylabel("per time bin")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", ncols=4)
        _time_axis(ax)

    return draw


def _memory(points: list[tuple[Any, GroupSummary]]) -> Callable[[Axes], None]:
    def draw(ax: Axes) -> None:
        from matplotlib.ticker import FuncFormatter

        timed = [(t, g.mem_peak_bytes.max) for t, g in points if g.mem_peak_bytes is not None]
        if _untimed(ax, timed, "memory figure"):
            return
        ax.plot([t for t, _ in timed], [m for _, m in timed], marker=".", color="tab:purple")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_bytes(v)))
        ax.set_ylabel("mem_peak_bytes, max")
        ax.set_ylim(bottom=0)
        _time_axis(ax)

    return draw


def _time_axis(ax: Axes) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()  # type: ignore[no-untyped-call,unused-ignore]
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call,unused-ignore]
    ax.set_xlabel("time (UTC)")


def _charts(
    collector: Collector, summary: Summary, bins: Sequence[Bin], groups: Sequence[GroupSummary]
) -> str:
    out = []
    for g in groups:
        name = _key(g.key)
        peak = format_bytes(g.mem_peak_bytes.max) if g.mem_peak_bytes else "not reported"
        facts = f"{g.calls:,} calls, {g.errors:,} errors, {g.leaks:,} leaks; peak memory {peak}"
        if g.wall_ms is not None:
            facts += f"; wall p50 {g.wall_ms.p50:.3g} ms, p95 {g.wall_ms.p95:.3g} ms"
        points = _series(bins, g.key)
        charts = [
            _svg(_distribution(collector.wall_buckets(g.key)), "latency distribution"),
            _svg(_latency(points), "wall p50 and p95 over time"),
            _svg(_counts(points), "errors, fallbacks, grad calls and leaks over time"),
            _svg(_memory(points), "peak memory over time"),
        ]
        out.append(
            f"<h2>{_e(summary.by)}: {_e(name)}</h2>\n<p>{_e(facts)}</p>\n"
            f'<div class="charts">{"".join(charts)}</div>'
        )
    if not bins:
        out.append('<p class="note">No event has a timestamp: nothing to draw over time.</p>')
    return "\n".join(out)


def _compare(comparison: Comparison) -> str:
    base = comparison.baseline
    title = (
        f"Compare with the baseline ({len(base.files):,} file(s), {base.totals.calls:,} "
        f"calls), threshold {comparison.threshold * 100:g}%"
    )
    pairs = [
        (_key(c.key), c.baseline.wall_ms.p95, c.current.wall_ms.p95)
        for c in comparison.changes
        if c.baseline and c.current and c.baseline.wall_ms and c.current.wall_ms
    ]

    def draw(ax: Axes) -> None:
        names = [clean(n)[:40] for n, _, _ in pairs]
        positions = range(len(pairs))
        ax.barh([p + 0.2 for p in positions], [b for _, b, _ in pairs], 0.4, label="baseline")
        ax.barh([p - 0.2 for p in positions], [c for _, _, c in pairs], 0.4, label="current")
        ax.set_yticks(list(positions), names)
        ax.invert_yaxis()
        ax.set_xlabel("wall p95, ms")
        ax.legend(loc="lower right")

    chart = _svg(draw, "wall p95: baseline and current") if pairs else ""
    counts = ", ".join(f"{len(comparison.keys(s))} {s}" for s in ("regressed", "new", "vanished"))
    return (
        f"<h2>{_e(title)}</h2>\n<p>{_e(counts)}</p>\n"
        f'<div class="charts">{chart}</div>\n{_table(*compare_rows(comparison))}'
    )
