"""Aggregate gradguard events per group, compare two runs, check fail-on conditions.

:class:`Collector` consumes batches of raw lines in one pass. Its memory grows
with the number of groups (a few sketches and counters each), never with the
number of records. :func:`summarize` drives it over files; :func:`compare`
and :func:`check_fail_on` work on the finished :class:`Summary` objects.

Example:
    >>> c = Collector()
    >>> c.feed([b'{"event": "gradguard.call", "schema": 1, "target": "f", "mode": "inference",'
    ...         b' "status": "ok", "fallback": false, "wall_ms": 2.0}'])
    >>> c.summary().groups[0].calls
    1
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any, Literal

from gradguard._audit import _reader, _typed
from gradguard._audit._sketch import MAX_INDEXABLE, LogSketch

__all__ = [
    "FAIL_ON_CONDITIONS",
    "GROUP_KEYS",
    "Change",
    "Collector",
    "Comparison",
    "FailOnResult",
    "GroupSummary",
    "Stats",
    "Summary",
    "check_fail_on",
    "compare",
    "summarize",
    "valid_timestamp",
]

GroupBy = Literal["target", "rank", "host", "device"]
GroupKey = str | int | None

GROUP_KEYS: tuple[GroupBy, ...] = ("target", "rank", "host", "device")
FAIL_ON_CONDITIONS = ("errors", "leaks", "fallbacks", "grad", "waste", "regression", "empty")

_NONE = type(None)
# Types accepted for the grouping field of an event; target is mandatory.
_KEY_TYPES: dict[str, frozenset[type]] = {
    "target": frozenset({str}),
    "rank": frozenset({int, _NONE}),
    "host": frozenset({str, _NONE}),
    "device": frozenset({str, _NONE}),
}
_NUMBER = frozenset({int, float})
_OPT_NUMBER = frozenset({int, float, _NONE})
_OPT_INT = frozenset({int, _NONE})
_OPT_STR = frozenset({str, _NONE})
_CALL_FIELDS = (
    "event", "schema", "target", "wall_ms", "status", "mode", "fallback",
    "gpu_ms", "mem_peak_bytes", "device", "rank", "timestamp", "grad_recorded", "training_modules",
)  # fmt: skip
_OPTIONAL_DEFAULTS: dict[str, Any] = {
    "gpu_ms": None,
    "mem_peak_bytes": None,
    "device": None,
    "rank": None,
    "host": None,
    "timestamp": None,
    "grad_recorded": False,
    "training_modules": 0,
}
_ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,9})?(?:Z|\+00:00)")
# The integers every backend reads exactly: a rank, a memory figure or a module count
# beyond them makes an event invalid, whichever backend decoded it.
_INT_MIN, _INT_MAX = _reader.INT_MIN, _reader.INT_MAX
_FLUSH_EVERY = 1 << 16  # lines between folds of all buffers: at most 1.5 MB of doubles


class _Group:
    """Mutable per-group accumulator (the collector's only per-group state)."""

    __slots__ = (
        "add_gpu", "add_mem", "add_wall", "devices", "errors", "fallbacks", "gpu", "grad",
        "leaks", "mem", "no_grad", "ranks", "wall", "waste",
    )  # fmt: skip

    def __init__(self, alpha: float) -> None:
        self.errors = 0
        self.no_grad = 0
        self.fallbacks = 0
        self.grad = 0
        self.leaks = 0
        self.waste = 0  # gradguard.waste events (gradguard scan's findings)
        self.wall = LogSketch(alpha)
        self.gpu = LogSketch(alpha)
        self.mem = LogSketch(alpha)
        # Bound once: the hot loop appends through these.
        self.add_wall = self.wall.buffer.append
        self.add_gpu = self.gpu.buffer.append
        self.add_mem = self.mem.buffer.append
        self.devices: set[str] = set()
        self.ranks: set[int] = set()

    def flush(self) -> None:
        self.wall.flush()
        self.gpu.flush()
        self.mem.flush()

    def merge(self, other: _Group) -> None:
        self.errors += other.errors
        self.no_grad += other.no_grad
        self.fallbacks += other.fallbacks
        self.grad += other.grad
        self.leaks += other.leaks
        self.waste += other.waste
        self.wall.merge(other.wall)
        self.gpu.merge(other.gpu)
        self.mem.merge(other.mem)
        self.devices |= other.devices
        self.ranks |= other.ranks


@dataclass(frozen=True)
class Stats:
    """Distribution of one measure: exact count, min and max; sketched percentiles."""

    count: int
    min: float
    p50: float
    p95: float
    p99: float
    max: float

    @classmethod
    def from_sketch(cls, sketch: LogSketch) -> Stats | None:
        """Read a sketch; None when it holds no value."""
        lo, hi = sketch.min, sketch.max
        p50, p95, p99 = sketch.quantile(0.5), sketch.quantile(0.95), sketch.quantile(0.99)
        if lo is None or hi is None or p50 is None or p95 is None or p99 is None:
            return None
        return cls(sketch.count, lo, p50, p95, p99, hi)


@dataclass(frozen=True)
class GroupSummary:
    """Everything the audit reports about one group (or, with key None, the totals)."""

    key: GroupKey
    calls: int
    errors: int
    inference: int
    no_grad: int
    fallbacks: int
    grad_calls: int
    leaks: int
    wall_ms: Stats | None
    gpu_ms: Stats | None
    mem_peak_bytes: Stats | None
    devices: tuple[str, ...]
    ranks: tuple[int, ...]
    waste: int = 0

    @classmethod
    def _from_group(cls, key: GroupKey, g: _Group) -> GroupSummary:
        calls = g.wall.count
        return cls(
            key=key,
            calls=calls,
            errors=g.errors,
            inference=calls - g.no_grad,
            no_grad=g.no_grad,
            fallbacks=g.fallbacks,
            grad_calls=g.grad,
            leaks=g.leaks,
            wall_ms=Stats.from_sketch(g.wall),
            gpu_ms=Stats.from_sketch(g.gpu),
            mem_peak_bytes=Stats.from_sketch(g.mem),
            devices=tuple(sorted(g.devices)),
            ranks=tuple(sorted(g.ranks)),
            waste=g.waste,
        )


@dataclass(frozen=True)
class Summary:
    """The result of one audit pass over a set of files."""

    by: GroupBy
    groups: tuple[GroupSummary, ...]
    totals: GroupSummary
    first: str | None
    last: str | None
    skipped: int
    skipped_by_reason: dict[str, int]
    files: tuple[str, ...] = ()
    relative_accuracy: float = 0.01

    @property
    def events(self) -> int:
        """The gradguard events counted: calls, leaks and waste findings (0: a wrong path,
        or logging that was never configured)."""
        t = self.totals
        return t.calls + t.leaks + t.waste

    def no_events(self) -> str | None:
        """Why no gradguard event was counted, as a sentence; None when some were."""
        if self.events:
            return None
        if not self.skipped:
            return "no line was read"
        reasons = ", ".join(f"{k} {v:,}" for k, v in self.skipped_by_reason.items() if v)
        return f"{self.skipped:,} non-empty line(s), none a gradguard event ({reasons})"

    @property
    def span_seconds(self) -> float | None:
        """Seconds from the first to the last timestamp, or None without timestamps."""
        if self.first is None or self.last is None:
            return None
        return (_parse_utc(self.last) - _parse_utc(self.first)).total_seconds()

    def group(self, key: GroupKey) -> GroupSummary | None:
        """The group with ``key``, or None."""
        for g in self.groups:
            if g.key == key and type(g.key) is type(key):
                return g
        return None


def valid_timestamp(ts: str) -> bool:
    """Whether ``ts`` is an ISO 8601 UTC time of a real date ("2026-13-45..." is not)."""
    if not _ISO_UTC.fullmatch(ts):
        return False
    try:
        _parse_utc(ts)
    except ValueError:  # month 13, day 45, hour 25, year 0
        return False
    return True


def _parse_utc(ts: str) -> datetime:
    # fromisoformat on Python 3.10 takes neither "Z" nor 9 fraction digits.
    head, _, frac = ts.replace("Z", "+00:00").partition(".")
    if frac:
        digits, zone = frac[:-6], frac[-6:]
        head = f"{head}.{digits[:6]:0<6}{zone}"
    return datetime.fromisoformat(head)


def _sort_key(key: GroupKey) -> tuple[int, int, str]:
    if key is None:
        return (2, 0, "")
    if isinstance(key, int):
        return (0, key, "")
    return (1, 0, key)


class Collector:
    """Streams lines into per-group accumulators.

    Each non-empty line is one of: a valid ``gradguard.call`` or
    ``gradguard.leak`` event (counted), or skipped for one of three reasons:
    ``not_json`` (undecodable, truncated, or JSON that is not an object),
    ``other_event`` (an object that is not a gradguard event), ``invalid``
    (a gradguard event with a missing field, a wrong type, or an out-of-range
    value). Extra fields are ignored. The time span covers the well-formed
    ISO 8601 UTC timestamps (``...Z`` or ``...+00:00``) of counted events.
    """

    def __init__(self, by: GroupBy = "target", relative_accuracy: float = 0.01) -> None:
        if by not in _KEY_TYPES:
            msg = f"by must be one of {', '.join(GROUP_KEYS)}; got {by!r}"
            raise ValueError(msg)
        self.by: GroupBy = by
        self.alpha = relative_accuracy
        self._groups: dict[GroupKey, _Group] = {}
        # One C-level lookup fetches every field a call event needs; the
        # grouping field comes last (for "target" it is fetched twice).
        self._pick = itemgetter(*_CALL_FIELDS, by)
        self._first = "\uffff"
        self._last = ""
        self._timestamps: list[str] = []  # of the current batch
        self._not_json = 0
        self._other = 0
        self._invalid = 0
        self._pending = 0
        self._decode_batch = _typed.batch_decoder()

    def _group(self, key: GroupKey) -> _Group:
        g = _Group(self.alpha)
        self._groups[key] = g
        return g

    def feed(self, lines: Sequence[bytes], loads: Callable[[bytes], Any] | None = None) -> None:
        """Account for every line of ``lines`` (raw bytes, without newlines).

        This is the audit's hot loop: one decode, one C-level fetch of all
        fields, every check before any update, numbers appended to plain
        lists that the sketches fold in bulk. Events missing optional fields,
        leaks and foreign events take the slower :meth:`_uncommon` path.
        """
        if loads is None and self._decode_batch is not None:
            records = self._decode_batch(lines)
            if records is not None:
                self._feed_typed(records, lines)
                return
        loads = _reader.loads if loads is None else loads
        groups = self._groups
        new_group = self._group
        pick = self._pick
        uncommon = self._uncommon
        key_types = _KEY_TYPES[self.by]
        number, opt_number, opt_int, opt_str = _NUMBER, _OPT_NUMBER, _OPT_INT, _OPT_STR
        top = MAX_INDEXABLE
        int_min, int_max = _INT_MIN, _INT_MAX
        timestamps = self._timestamps
        add_timestamp = timestamps.append
        not_json = invalid = 0
        for line in lines:
            try:
                rec = loads(line)
                # fmt: off
                (event, schema, target, wall, status, mode, fallback, gpu, mem, device, rank,
                 ts, grad, training, key) = pick(rec)
                # fmt: on
            except KeyError:
                fields = uncommon(rec)
                if fields is None:
                    continue
                # fmt: off
                (event, schema, target, wall, status, mode, fallback, gpu, mem, device, rank,
                 ts, grad, training, key) = fields
                # fmt: on
            except (ValueError, TypeError, RecursionError):
                # TypeError: valid JSON that is not an object ([], "x", 1, null).
                if line.strip():
                    not_json += 1
                continue
            if event != "gradguard.call":
                uncommon(rec)
                continue
            if (
                schema != 1
                or type(target) is not str
                or type(key) not in key_types
                or type(wall) not in number
                or not 0.0 <= wall <= top
                or (status != "ok" and status != "error")
                or (mode != "inference" and mode != "no_grad")
                or (fallback is not False and fallback is not True)
                or (grad is not False and grad is not True)
                or type(training) is not int
                or not 0 <= training <= int_max
                or type(gpu) not in opt_number
                or type(mem) not in opt_int
                or type(device) not in opt_str
                or type(rank) not in opt_int
                or type(ts) not in opt_str
                or (gpu is not None and not 0.0 <= gpu <= top)
                or (mem is not None and not 0 <= mem <= int_max)
                or (rank is not None and not int_min <= rank <= int_max)
            ):
                invalid += 1
                continue
            g = groups.get(key)
            if g is None:
                g = new_group(key)
            g.add_wall(wall)
            if gpu is not None:
                g.add_gpu(gpu)
            if mem is not None:
                g.add_mem(mem)
            if device is not None:
                g.devices.add(device)
            if rank is not None:
                g.ranks.add(rank)
            if ts is not None:
                add_timestamp(ts)
            if status != "ok":
                g.errors += 1
            if mode != "inference":
                g.no_grad += 1
            if fallback:
                g.fallbacks += 1
            if grad or training:
                g.grad += 1
        self._not_json += not_json
        self._invalid += invalid
        self._end_batch(len(lines))

    def _feed_typed(self, records: list[Any], lines: Sequence[bytes]) -> None:
        """Account for a batch decoded by msgspec, in one pass over its records.

        Complete, valid call events are accounted for here, leaks and foreign events
        counted from their typed fields; any other line (a call event with a field
        missing or out of range) goes through the exact line-by-line path, which decides
        its skip. ``lines`` is only looked at for those, so a batch read as one block
        (``_reader.Lines``) is never split into lines. The accounting of a call is
        ``feed``'s, written out again on purpose: a shared helper would add a function
        call per record to both hot loops.
        """
        top = MAX_INDEXABLE
        by = self.by
        groups = self._groups
        new_group = self._group
        add_timestamp = self._timestamps.append
        rest: list[int] = []
        other = calls = 0
        for index, r in enumerate(records):
            event = r.event
            if event == "gradguard.call":
                wall, gpu, mem, status, mode = (
                    r.wall_ms,
                    r.gpu_ms,
                    r.mem_peak_bytes,
                    r.status,
                    r.mode,
                )
                if (
                    r.schema != 1
                    or r.target is None
                    or wall is None
                    or r.fallback is None
                    or (status != "ok" and status != "error")
                    or (mode != "inference" and mode != "no_grad")
                    or not 0.0 <= wall <= top
                    or not 0 <= r.training_modules <= _INT_MAX
                    or (gpu is not None and not 0.0 <= gpu <= top)
                    or (mem is not None and not 0 <= mem <= _INT_MAX)
                    or (r.rank is not None and not _INT_MIN <= r.rank <= _INT_MAX)
                ):
                    rest.append(index)
                    continue
                calls += 1
                key = getattr(r, by)
                g = groups.get(key)
                if g is None:
                    g = new_group(key)
                g.add_wall(wall)
                if gpu is not None:
                    g.add_gpu(gpu)
                if mem is not None:
                    g.add_mem(mem)
                if r.device is not None:
                    g.devices.add(r.device)
                if r.rank is not None:
                    g.ranks.add(r.rank)
                if r.timestamp is not None:
                    add_timestamp(r.timestamp)
                if status != "ok":
                    g.errors += 1
                if mode != "inference":
                    g.no_grad += 1
                if r.fallback:
                    g.fallbacks += 1
                if r.grad_recorded or r.training_modules:
                    g.grad += 1
            elif event == "gradguard.leak":
                rank = r.rank
                if r.target is None or (rank is not None and not _INT_MIN <= rank <= _INT_MAX):
                    rest.append(index)  # the exact path says why it is skipped
                    continue
                key = getattr(r, by)
                g = groups.get(key)
                if g is None:
                    g = new_group(key)
                g.leaks += 1
                if r.timestamp is not None:
                    add_timestamp(r.timestamp)
            elif event == "gradguard.waste":
                rest.append(index)  # rare: counted by the exact path
            else:
                other += 1
        self._other += other
        self._end_batch(calls)
        if rest:
            self.feed([lines[i] for i in rest], loads=_reader.loads)

    def _uncommon(self, rec: Any) -> tuple[Any, ...] | None:
        """Handle what the fast path cannot: missing optional fields, leaks, other events.

        Returns the call fields with defaults filled in for the fast path to
        check, or None when the record was accounted for here.
        """
        event = rec.get("event")
        if event == "gradguard.call":
            try:
                return self._pick(_OPTIONAL_DEFAULTS | rec)  # type: ignore[no-any-return]
            except KeyError:
                self._invalid += 1
                return None
        if event != "gradguard.leak" and event != "gradguard.waste":
            self._other += 1
            return None
        key = rec.get(self.by)
        ts = rec.get("timestamp")
        if (
            type(rec.get("target")) is not str
            or type(key) not in _KEY_TYPES[self.by]
            or (type(key) is int and not _INT_MIN <= key <= _INT_MAX)
            or type(ts) not in _OPT_STR
        ):
            self._invalid += 1
            return None
        g = self._groups.get(key)
        if g is None:
            g = self._group(key)
        if event == "gradguard.waste":
            g.waste += 1
        else:
            g.leaks += 1
        if ts is not None:
            self._timestamps.append(ts)
        return None

    def _end_batch(self, nlines: int) -> None:
        timestamps = self._timestamps
        if timestamps:
            lo, hi = min(timestamps), max(timestamps)
            if not (valid_timestamp(lo) and valid_timestamp(hi)):
                # Rare: a malformed timestamp is an extreme; keep only good ones.
                good = [t for t in timestamps if valid_timestamp(t)]
                lo, hi = (min(good), max(good)) if good else (self._first, self._last)
            self._first = min(self._first, lo)
            self._last = max(self._last, hi)
            timestamps.clear()
        self._pending += nlines
        if self._pending >= _FLUSH_EVERY:
            self._pending = 0
            for g in self._groups.values():
                g.flush()

    def merge(self, other: Collector) -> None:
        """Take in everything ``other`` (same ``by`` and accuracy) has collected."""
        if other.by != self.by or other.alpha != self.alpha:
            msg = f"cannot merge a collector by {other.by!r} into one by {self.by!r}"
            raise ValueError(msg)
        for key, group in other._groups.items():
            mine = self._groups.get(key)
            (self._group(key) if mine is None else mine).merge(group)
        self._not_json += other._not_json
        self._other += other._other
        self._invalid += other._invalid
        self._first = min(self._first, other._first)
        self._last = max(self._last, other._last)

    def wall_buckets(self, key: GroupKey) -> list[tuple[float, float, int]]:
        """The wall-time histogram of group ``key`` (see ``LogSketch.buckets``); [] if none."""
        group = self._groups.get(key)
        return [] if group is None else group.wall.buckets()

    def summary(self, files: Sequence[str] = ()) -> Summary:
        """Finish: per-group summaries sorted by key, totals, span and skip counts."""
        total = _Group(self.alpha)
        groups = []
        for key in sorted(self._groups, key=_sort_key):
            g = self._groups[key]
            g.flush()
            total.merge(g)
            groups.append(GroupSummary._from_group(key, g))
        reasons = {"not_json": self._not_json, "other_event": self._other, "invalid": self._invalid}
        return Summary(
            by=self.by,
            groups=tuple(groups),
            totals=GroupSummary._from_group(None, total),
            first=self._first if self._last else None,
            last=self._last or None,
            skipped=sum(reasons.values()),
            skipped_by_reason=reasons,
            files=tuple(files),
            relative_accuracy=self.alpha,
        )


def summarize(
    paths: Sequence[str],
    by: GroupBy = "target",
    progress: _reader.Progress | None = None,
    relative_accuracy: float = 0.01,
) -> Summary:
    """Read every file of ``paths`` (already expanded) in one pass and summarize.

    ``progress``, if given, is updated as the files are read and closed at the end.

    Raises:
        InputError: a file cannot be read.
    """
    collector = Collector(by, relative_accuracy)
    feed = collector.feed
    try:
        for batch in _reader.iter_line_batches(paths, progress):
            feed(batch)
    finally:
        if progress is not None:
            progress.close()
    return collector.summary(paths)


# --- compare -------------------------------------------------------------------------------

ChangeStatus = Literal["regressed", "unchanged", "new", "vanished"]


@dataclass(frozen=True)
class Change:
    """How one group moved from the baseline to the current run."""

    key: GroupKey
    status: ChangeStatus
    baseline: GroupSummary | None
    current: GroupSummary | None
    wall_p95_change: float | None  # relative: 0.25 means +25%; None when not comparable
    mem_max_change: float | None
    flags: tuple[str, ...] = field(default=())  # which measures grew past the threshold


@dataclass(frozen=True)
class Comparison:
    """A current summary set against a baseline summary."""

    threshold: float  # relative: 0.1 means 10%
    baseline: Summary
    changes: tuple[Change, ...]

    def keys(self, status: ChangeStatus) -> tuple[GroupKey, ...]:
        """Keys of the groups with ``status``."""
        return tuple(c.key for c in self.changes if c.status == status)


def _p95(stats: Stats | None) -> float | None:
    return None if stats is None else stats.p95


def _max(stats: Stats | None) -> float | None:
    return None if stats is None else stats.max


def _growth(before: float | None, after: float | None) -> float | None:
    if before is None or after is None:
        return None
    if before == 0:
        return 0.0 if after == 0 else float("inf")
    return after / before - 1.0


def compare(baseline: Summary, current: Summary, threshold: float = 0.10) -> Comparison:
    """Flag groups whose p95 wall time or max peak memory grew by more than ``threshold``.

    ``threshold`` is relative (0.10 = 10%). Percentiles carry the sketch's
    relative error (1% by default), so thresholds below about twice that are
    noise. Groups only in ``current`` are "new", only in ``baseline`` "vanished".
    """
    if not threshold >= 0.0:
        msg = f"threshold must be a non-negative fraction such as 0.1; got {threshold!r}"
        raise ValueError(msg)
    base = {(type(g.key), g.key): g for g in baseline.groups}
    cur = {(type(g.key), g.key): g for g in current.groups}
    changes = []
    for ident in sorted(base.keys() | cur.keys(), key=lambda k: _sort_key(k[1])):
        b, c = base.get(ident), cur.get(ident)
        if b is None or c is None:
            status: ChangeStatus = "new" if b is None else "vanished"
            changes.append(Change(ident[1], status, b, c, None, None))
            continue
        wall = _growth(_p95(b.wall_ms), _p95(c.wall_ms))
        mem = _growth(_max(b.mem_peak_bytes), _max(c.mem_peak_bytes))
        limit = 1.0 + threshold
        flags = tuple(
            name
            for name, before, after in (
                ("wall_ms.p95", _p95(b.wall_ms), _p95(c.wall_ms)),
                ("mem_peak_bytes.max", _max(b.mem_peak_bytes), _max(c.mem_peak_bytes)),
            )
            if before is not None and after is not None and after > before * limit
        )
        changes.append(
            Change(ident[1], "regressed" if flags else "unchanged", b, c, wall, mem, flags)
        )
    return Comparison(threshold, baseline, tuple(changes))


# --- fail-on -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FailOnResult:
    """Which of the requested conditions were found, with a sentence for each."""

    conditions: tuple[str, ...]
    failed: tuple[str, ...]
    details: dict[str, str]

    @property
    def exit_code(self) -> int:
        """1 when any requested condition was found, else 0."""
        return 1 if self.failed else 0


def check_fail_on(
    conditions: Sequence[str], summary: Summary, comparison: Comparison | None = None
) -> FailOnResult:
    """Evaluate ``conditions`` (a subset of FAIL_ON_CONDITIONS) on the current run.

    Raises:
        ValueError: an unknown condition, or "regression" without a comparison.
    """
    unknown = [c for c in conditions if c not in FAIL_ON_CONDITIONS]
    if unknown:
        choices = ", ".join(FAIL_ON_CONDITIONS)
        msg = f"unknown fail-on condition {unknown[0]!r}; choose from {choices}"
        raise ValueError(msg)
    if "regression" in conditions and comparison is None:
        msg = "fail-on 'regression' needs a baseline; add --compare BASELINE..."
        raise ValueError(msg)
    t = summary.totals
    found: dict[str, str] = {}
    if "errors" in conditions and t.errors:
        found["errors"] = f"{t.errors} call(s) raised an error"
    if "leaks" in conditions and t.leaks:
        found["leaks"] = f"{t.leaks} leak(s) recorded"
    if "waste" in conditions and t.waste:
        found["waste"] = f"{t.waste} gradguard scan finding(s) of unguarded inference"
    if "fallbacks" in conditions and t.fallbacks:
        found["fallbacks"] = f"{t.fallbacks} call(s) fell back from inference_mode to no_grad"
    if "grad" in conditions and t.grad_calls:
        found["grad"] = (
            f"{t.grad_calls} call(s) recorded gradients or left modules in training mode"
        )
    empty = summary.no_events()
    if "empty" in conditions and empty is not None:
        found["empty"] = f"no gradguard events: {empty}"
    if "regression" in conditions and comparison is not None:
        regressed = comparison.keys("regressed")
        if regressed:
            names = ", ".join(str(k) for k in regressed[:5])
            if len(regressed) > 5:
                names += ", ..."
            found["regression"] = f"{len(regressed)} group(s) regressed: {names}"
    ordered = tuple(c for c in dict.fromkeys(conditions))
    return FailOnResult(ordered, tuple(c for c in ordered if c in found), found)
