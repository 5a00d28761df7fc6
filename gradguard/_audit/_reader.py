"""Find, open and read gradguard logs as batches of raw lines.

Inputs are plain or gzip-compressed JSON-lines files (gzip is recognised by its
magic bytes, whatever the name), glob patterns expanded here rather than by
the shell, and ``-`` for standard input. Files are read in binary, in large
chunks, and handed on as lists of lines so that the per-line work stays in
one tight loop (see ``_summary.Collector.feed``).

Example:
    >>> from gradguard._audit._reader import expand_inputs
    >>> expand_inputs(["-"])
    ['-']
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, Protocol, overload

__all__ = [
    "CHUNK_BYTES",
    "INT_MAX",
    "INT_MIN",
    "JSON_BACKEND",
    "MAX_LINE_BYTES",
    "OVERSIZED_LINE",
    "InputError",
    "NumberOutOfRange",
    "Progress",
    "backends",
    "expand_inputs",
    "has_suspect_number",
    "iter_line_batches",
    "loads",
    "strict_loads",
    "total_size",
]

CHUNK_BYTES = 1 << 20
"""Bytes read at a time; a batch holds the complete lines of one chunk."""

MAX_LINE_BYTES = 16 << 20
"""Longer lines are not kept whole; :data:`OVERSIZED_LINE` stands in for each."""

OVERSIZED_LINE = b"\x00<line longer than MAX_LINE_BYTES>"
"""Placeholder yielded for an over-long line; it never decodes, so it is skipped."""

_GZIP_MAGIC = b"\x1f\x8b"
_GLOB_CHARS = frozenset("*?[")


INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1
"""The integers every backend keeps exactly (int64 and uint64 together)."""

# A number that may break the rule below: 20 or more digits in a row (19 after a minus
# sign), or an exponent of three digits or more. Only such a line needs the strict
# decoder; digits inside a string match too, which costs a slower decode, not a wrong one.
_SUSPECT_NUMBER = re.compile(rb"\d{20}|-\d{19}|[eE][+-]?\d{3}")


class NumberOutOfRange(Exception):
    """A line is JSON but holds an integer beyond 64 bits or a number beyond a double.

    Deliberately not a ``ValueError``: such a line is skipped as ``invalid``, not as
    ``not_json``.
    """


def _reject_constant(name: str) -> Any:
    # json accepts NaN and Infinity, which are not JSON; orjson and msgspec reject them.
    msg = f"{name} is not valid JSON"
    raise ValueError(msg)


def _int64(text: str) -> int:
    # Checked on the text first: Python refuses to convert more than 4,300 digits.
    if len(text) > 21:
        raise NumberOutOfRange(text[:20] + "...")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise NumberOutOfRange(text)
    return value


def _double(text: str) -> float:
    value = float(text)
    if value in (math.inf, -math.inf):
        raise NumberOutOfRange(text[:20])
    return value


_strict_decode = json.JSONDecoder(
    parse_constant=_reject_constant, parse_int=_int64, parse_float=_double
).decode


def strict_loads(line: bytes) -> Any:
    """Decode ``line`` by gradguard's rule for every backend, with the standard library.

    The rule: strict JSON (no NaN, Infinity or -Infinity), every integer within 64 bits
    (``INT_MIN`` to ``INT_MAX``) and every number within a double's range.

    Raises:
        ValueError: the line is not JSON (it is skipped as ``not_json``).
        NumberOutOfRange: it is JSON that breaks the rule (skipped as ``invalid``).
    """
    return _strict_decode(line.decode("utf-8"))


def _checked(decode: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``decode``, except that a line with a suspect number goes to :func:`strict_loads`."""
    suspect = _SUSPECT_NUMBER.search

    def loads(line: bytes) -> Any:
        if suspect(line):
            return strict_loads(line)
        return decode(line)

    return loads


def has_suspect_number(data: bytes) -> bool:
    """Whether ``data`` (one line or a whole block) may hold a number :func:`loads` rejects."""
    return _SUSPECT_NUMBER.search(data) is not None


def backends() -> dict[str, Callable[[bytes], Any]]:
    """Every installed line decoder by name, each following :func:`strict_loads`' rule.

    The collector uses the first; the tests compare them all.
    """
    found: dict[str, Callable[[bytes], Any]] = {}
    try:
        import orjson
    except ImportError:
        pass
    else:
        found["orjson"] = _checked(orjson.loads)
    plain = json.JSONDecoder(parse_constant=_reject_constant).decode

    def stdlib(line: bytes) -> Any:
        return plain(line.decode("utf-8"))

    found["json"] = _checked(stdlib)
    return found


def _make_loads() -> tuple[Callable[[bytes], Any], str]:
    name, decode = next(iter(backends().items()))
    return decode, name


def _make_fast_loads() -> Callable[[bytes], Any]:
    try:
        import orjson
    except ImportError:
        plain = json.JSONDecoder(parse_constant=_reject_constant).decode
        return lambda line: plain(line.decode("utf-8"))
    return orjson.loads


fast_loads = _make_fast_loads()
""":data:`loads` without the number check: only for lines :func:`has_suspect_number` cleared."""

loads, JSON_BACKEND = _make_loads()
"""Decode one JSON document from bytes; ``JSON_BACKEND`` is "orjson" or "json".

Both follow one rule (see :func:`strict_loads`): they raise ``ValueError`` (or
``RecursionError`` for absurd nesting with json) on anything that is not JSON, and
:class:`NumberOutOfRange` on JSON with an integer beyond 64 bits or a number beyond
a double's range.
"""


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


class InputError(Exception):
    """An input cannot be read: missing file, glob matching nothing, bad gzip.

    The CLI turns it into exit status 2; the message names the input and says
    what to do.
    """


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """Expand files and glob patterns into a list of paths, in order, each file once.

    ``-`` stands for standard input. A name that exists is taken literally,
    even if it contains glob characters; otherwise a pattern with ``*``, ``?``
    or ``[`` is expanded (``**`` recurses) and sorted.

    Raises:
        InputError: a file is missing, is a directory, or a glob matches nothing.
    """
    paths: list[str] = []
    seen: set[object] = set()
    for pattern in patterns:
        if pattern == "-" or os.path.isfile(pattern):
            matches = [pattern]
        elif os.path.isdir(pattern):
            msg = (
                f"{pattern!r} is a directory; pass the log files inside it, "
                f"e.g. '{os.path.join(pattern, '*.jsonl')}' (quoted)"
            )
            raise InputError(msg)
        elif _GLOB_CHARS.intersection(pattern):
            matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not matches:
                msg = f"no file matches the pattern {pattern!r}; check the path and the quoting"
                raise InputError(msg)
        else:
            msg = f"no such file: {pattern!r}; check the path, or pass - to read standard input"
            raise InputError(msg)
        for path in matches:
            # The same file reached twice (a symlink, a loop that ** follows down to
            # the system's limit, ./a and a) is read once, under its first name.
            identity = _identity(path)
            if identity not in seen:
                seen.add(identity)
                paths.append(path)
    return paths


def _identity(path: str) -> object:
    if path == "-":
        return path
    try:
        info = os.stat(path)
    except OSError:
        return os.path.abspath(path)  # opening it will say what is wrong
    return (info.st_dev, info.st_ino)


class Progress:
    """A one-line progress indicator on a terminal; silent elsewhere.

    It only draws when ``stream`` is a TTY and either the known input size
    exceeds ``min_bytes`` or reading has taken longer than ``min_seconds``.
    It redraws at most ten times a second.
    """

    def __init__(
        self,
        total_bytes: int | None,
        stream: IO[str] | None = None,
        *,
        min_bytes: int = 5 << 20,
        min_seconds: float = 1.0,
    ) -> None:
        self._stream = sys.stderr if stream is None else stream
        self._enabled = _isatty(self._stream)
        self._total = total_bytes
        self._start = time.monotonic()
        self._show_at = self._start if (total_bytes or 0) > min_bytes else self._start + min_seconds
        self._next_draw = self._show_at
        self._drawn = False
        self.bytes_done = 0
        self.records_done = 0

    def update(self, nbytes: int, nrecords: int) -> None:
        """Account for ``nbytes`` more input and ``nrecords`` more lines."""
        self.bytes_done += nbytes
        self.records_done += nrecords
        if not self._enabled:
            return
        now = time.monotonic()
        if now < self._next_draw:
            return
        self._next_draw = now + 0.1
        elapsed = now - self._start
        rate = f"  {self.records_done / elapsed:,.0f} lines/s" if elapsed > 0.5 else ""
        done_mb = self.bytes_done / 1e6
        if self._total:
            frac = min(self.bytes_done / self._total, 1.0)
            bar = "#" * int(frac * 30)
            text = f"[{bar:<30}] {frac:4.0%} {done_mb:,.1f}/{self._total / 1e6:,.1f} MB"
        else:
            text = f"{done_mb:,.1f} MB"
        self._stream.write(f"\r{text}{rate} ")
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Erase the progress line, if one was drawn."""
        if self._drawn:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn = False


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def total_size(paths: Sequence[str]) -> int | None:
    """Sum of the on-disk sizes of ``paths``, or None when stdin is among them."""
    if "-" in paths:
        return None
    total = 0
    for path in paths:
        try:
            total += os.path.getsize(path)
        except OSError:
            return None
    return total


def _open(path: str) -> tuple[_Readable, IO[bytes]]:
    """Open ``path`` for binary reading; returns (decoded stream, raw stream)."""
    if path == "-":
        if sys.stdin is None or sys.stdin.closed:
            msg = "standard input is closed; pass the log files by name, or pipe them to -"
            raise InputError(msg)
        raw: IO[bytes] = sys.stdin.buffer
        head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    else:
        try:
            raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
        except OSError as exc:
            reason = exc.strerror or exc
            msg = f"cannot open {path!r}: {reason}; check that it exists and is readable"
            raise InputError(msg) from exc
        head = raw.read(2)
        raw.seek(0)
    if head == _GZIP_MAGIC or (not head and path.endswith(".gz")):
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    return raw, raw


def iter_line_batches(
    paths: Sequence[str], progress: Progress | None = None, chunk_bytes: int = CHUNK_BYTES
) -> Iterator[Sequence[bytes]]:
    """Yield the lines of every input, one sequence per chunk read, newlines stripped.

    A last line without a newline (a file cut off mid-write) is yielded too;
    the JSON decoder then rejects it if it is incomplete. Empty lines are
    yielded as ``b""`` and are for the caller to ignore.

    Raises:
        InputError: a file cannot be opened or its gzip stream is corrupt.
    """
    for path in paths:
        stream, raw = _open(path)
        name = "standard input" if path == "-" else repr(path)
        try:
            yield from _batches(stream, raw, progress, chunk_bytes)
        except (OSError, EOFError, zlib.error) as exc:
            msg = (
                f"cannot read {name}: {exc}; if it is a gzip file it is corrupt or cut short: "
                "decompress what can be read (zcat -f) and audit that instead"
            )
            raise InputError(msg) from exc
        finally:
            if path != "-":
                stream.close()
                raw.close()


class Lines(Sequence[bytes]):
    """The whole lines of one chunk, kept as one ``bytes`` until they are needed apart.

    A decoder of newline-delimited JSON (msgspec's) reads ``data`` as it is; splitting
    it into lines, and joining them back for such a decoder, would cost a third of what
    decoding does. ``len`` counts newlines without splitting.
    """

    __slots__ = ("_lines", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._lines: list[bytes] | None = None

    def _split(self) -> list[bytes]:
        if self._lines is None:
            self._lines = self.data.split(b"\n")
        return self._lines

    def __len__(self) -> int:
        return self.data.count(b"\n") + 1 if self._lines is None else len(self._lines)

    @overload
    def __getitem__(self, index: int) -> bytes: ...
    @overload
    def __getitem__(self, index: slice) -> list[bytes]: ...
    def __getitem__(self, index: int | slice) -> bytes | list[bytes]:
        return self._split()[index]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._split())


def _batches(
    stream: _Readable, raw: IO[bytes], progress: Progress | None, chunk_bytes: int
) -> Iterator[Sequence[bytes]]:
    read = stream.read
    tell = raw.tell if raw.seekable() else None
    position = tell() if tell else 0
    rest = b""
    oversized = False  # inside a line already reported as oversized
    while True:
        chunk = read(chunk_bytes)
        if not chunk:
            break
        data = rest + chunk if rest else chunk
        cut = data.rfind(b"\n")
        lines: Sequence[bytes]
        if cut < 0:
            lines, rest = [], data
        else:
            lines, rest = Lines(data[:cut]), data[cut + 1 :]
            if oversized:
                lines = list(lines)
                lines[0] = OVERSIZED_LINE  # the tail of the long line
                oversized = False
        if len(rest) > MAX_LINE_BYTES:
            # Keep memory bounded on garbage without newlines: drop the
            # partial line now and report it once, when it ends.
            oversized = True
            rest = b""
        if progress is not None:
            now = tell() if tell else position + len(chunk)
            progress.update(now - position, len(lines))
            position = now
        yield lines
    if oversized:
        yield [OVERSIZED_LINE]
    elif rest:
        yield [rest]
