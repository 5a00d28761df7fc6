"""The audit over time: the same summary per time bin, for the HTML report's charts.

Each line goes to the bin of its timestamp's prefix (the second, ten seconds, the
minute, ... the month), read from the raw bytes without decoding, and each bin is a
:class:`~gradguard._audit._summary.Collector` of its own, so that a bin counts and skips
exactly as the whole audit does. Bins start a second wide and are merged into wider
ones whenever there are more than :data:`MAX_BINS`, so memory stays bounded by the
number of groups times ``MAX_BINS``, whatever the span of the logs.

Standard library only: the charts are drawn elsewhere (``_html``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from gradguard._audit import _reader
from gradguard._audit._summary import Collector, GroupBy, Summary, _parse_utc, valid_timestamp

__all__ = ["MAX_BINS", "Bin", "Timeline", "summarize_with_timeline"]

MAX_BINS = 2000
"""More bins than this are merged into bins one step wider."""

# Prefix lengths of "2026-11-27T10:00:00": the second, 10 s, the minute, 10 min, the hour,
# the day, the month.
_WIDTHS = (19, 18, 16, 15, 13, 10, 7)
_PAD = "2000-01-01T00:00:00"
_TIMESTAMP = re.compile(rb'"timestamp"\s*:\s*"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)')


class Bin(NamedTuple):
    """One time bin: when it starts and the summary of its events."""

    start: datetime
    summary: Summary


class Timeline:
    """Per-bin collectors, fed the same batches of lines as the whole audit."""

    def __init__(self, by: GroupBy = "target", relative_accuracy: float = 0.01) -> None:
        self.by: GroupBy = by
        self.alpha = relative_accuracy
        self._width = _WIDTHS[0]
        self._bins: dict[bytes, Collector] = {}

    def feed(self, lines: Sequence[bytes]) -> None:
        """Put each line with a timestamp in its bin; lines without one are left out."""
        width = self._width
        search = _TIMESTAMP.search
        batches: defaultdict[bytes, list[bytes]] = defaultdict(list)
        for line in lines:
            found = search(line)
            if found is not None:
                batches[found.group(1)[:width]].append(line)
        for prefix, batch in batches.items():
            collector = self._bins.get(prefix)
            if collector is None:
                collector = self._bins[prefix] = Collector(self.by, self.alpha)
            collector.feed(batch)
        if len(self._bins) > MAX_BINS:
            self._coarsen(MAX_BINS)

    def _coarsen(self, limit: int) -> None:
        while len(self._bins) > limit and self._width != _WIDTHS[-1]:
            self._width = _WIDTHS[_WIDTHS.index(self._width) + 1]
            merged: dict[bytes, Collector] = {}
            for prefix in sorted(self._bins):
                collector = self._bins[prefix]
                into = merged.get(prefix[: self._width])
                if into is None:
                    merged[prefix[: self._width]] = collector
                else:
                    into.merge(collector)
            self._bins = merged

    def bins(self, max_points: int = 150) -> list[Bin]:
        """The bins in time order, merged down to at most ``max_points`` where possible.

        A bin whose prefix is not a real time ("2026-13-45T...") is left out: its events
        are in the whole audit, not on a time axis.
        """
        self._coarsen(max_points)
        out = []
        for prefix in sorted(self._bins):
            text = prefix.decode("ascii")
            stamp = text + _PAD[len(text) :] + "Z"
            if valid_timestamp(stamp):
                out.append(Bin(_parse_utc(stamp), self._bins[prefix].summary()))
        return out


def summarize_with_timeline(
    paths: Sequence[str],
    by: GroupBy = "target",
    progress: _reader.Progress | None = None,
    relative_accuracy: float = 0.01,
) -> tuple[Collector, Timeline]:
    """Read ``paths`` once, into a whole-run collector and a timeline.

    Raises:
        InputError: a file cannot be read.
    """
    collector = Collector(by, relative_accuracy)
    timeline = Timeline(by, relative_accuracy)
    try:
        for batch in _reader.iter_line_batches(paths, progress):
            collector.feed(batch)
            timeline.feed(batch)
    finally:
        if progress is not None:
            progress.close()
    return collector, timeline
