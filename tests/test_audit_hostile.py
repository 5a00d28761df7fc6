"""The audit never crashes on a log: hostile lines, odd paths, closed and full streams.

Every line a log can hold is counted or skipped with a reason, by one rule whatever JSON
backend is installed: strict JSON (no NaN or Infinity); the integers the audit reads
within 64 bits and its times finite, else the event is skipped as invalid; a number in a
field the audit does not read never decides anything, however large.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gradguard._audit import _reader, render, summarize, to_json_dict
from gradguard._audit._reader import Lines
from gradguard._audit._summary import Collector
from gradguard._cli import main
from tests._audit_helpers import call, leak, write_log

ROOT = Path(__file__).resolve().parents[1]
DIGITS_5000 = "7" * 5000


def raw_call(**raw: str) -> bytes:
    """A call event whose ``raw`` fields are spliced in as JSON text, unchecked."""
    event = call()
    for name in raw:
        event.pop(name, None)
    body = json.dumps(event)[:-1]
    extra = "".join(f', "{name}": {text}' for name, text in raw.items())
    return (body + extra + "}").encode()


# Each line, and how the audit must take it whatever the backend.
HOSTILE: list[tuple[str, bytes, str]] = [
    ("invalid date", json.dumps(call(timestamp="2026-13-45T25:61:61Z")).encode(), "counted"),
    ("year zero", json.dumps(call(timestamp="0000-01-01T00:00:00Z")).encode(), "counted"),
    ("Feb 30", json.dumps(call(timestamp="2026-02-30T00:00:00Z")).encode(), "counted"),
    ("rank beyond 64 bits", raw_call(rank=str(2**64)), "invalid"),
    ("rank below int64", raw_call(rank=str(-(2**63) - 1)), "invalid"),
    ("mem beyond 64 bits", raw_call(mem_peak_bytes=str(2**64 + 1)), "invalid"),
    ("5,000-digit call", raw_call(call=DIGITS_5000), "counted"),
    ("5,000-digit float", raw_call(pid=DIGITS_5000 + ".5"), "counted"),
    ("1e999 unread", raw_call(pid="1e999"), "counted"),
    ("-1e400 wall", raw_call(wall_ms="-1e400"), "invalid"),
    ("NaN wall", raw_call(wall_ms="NaN"), "not_json"),
    ("Infinity unread", raw_call(pid="Infinity"), "not_json"),
    ("-Infinity", raw_call(gpu_ms="-Infinity"), "not_json"),
    ("largest uint64 rank", raw_call(rank=str(2**64 - 1)), "counted"),
    ("smallest int64 rank", raw_call(rank=str(-(2**63))), "counted"),
    ("1e308 unread", raw_call(pid="1e308"), "counted"),
    ("digits in a string", json.dumps(call(target="t" + "9" * 40)).encode(), "counted"),
    ("hex id", json.dumps(call(request_id="req-5e2241", n="1e999")).encode(), "counted"),
    ("spaced huge int", raw_call(rank=" \t" + str(2**70)), "invalid"),
    ("huge int in a list", raw_call(extra="[1, " + str(2**70) + "]"), "counted"),
    ("huge exponent in a list", raw_call(extra="[1,-2.5E+400]"), "counted"),
    ("rank 1e999", raw_call(rank="1e999"), "invalid"),
    ("5,000-digit rank", raw_call(rank=DIGITS_5000), "invalid"),
    ("modules beyond 64 bits", raw_call(training_modules=str(2**64)), "invalid"),
    ("mem as 1e19", raw_call(mem_peak_bytes="1e19"), "invalid"),
    ("leak with 1e999 rank", json.dumps(leak("f")).encode()[:-1] + b', "rank": 1e999}', "counted"),
]


def _reason(summary: Any) -> str:
    if summary.totals.calls or summary.totals.leaks:
        return "counted"
    reasons = [k for k, v in summary.skipped_by_reason.items() if v]
    return reasons[0] if reasons else "nothing"


def _decoders() -> dict[str, Callable[[Sequence_bytes], Any]]:
    """Every way the audit can decode a batch, each as ``feed(collector, lines)``."""
    ways: dict[str, Callable[[Any], Any]] = {}
    for name, loads in _reader.backends().items():
        ways[name] = lambda lines, by="target", loads=loads: _line_by_line(lines, loads, by)
    try:
        import msgspec  # noqa: F401
    except ImportError:
        pass
    else:
        ways["msgspec"] = _typed
    return ways


Sequence_bytes = list[bytes]


def _line_by_line(lines: list[bytes], loads: Callable[[bytes], Any], by: str = "target") -> Any:
    collector = Collector(by)  # type: ignore[arg-type]
    collector._decode_batch = None
    collector.feed(lines, loads=loads)
    return collector.summary()


def _typed(lines: list[bytes], by: str = "target") -> Any:
    collector = Collector(by)  # type: ignore[arg-type]
    assert collector._decode_batch is not None
    collector.feed(Lines(b"\n".join(lines)))
    return collector.summary()


def test_every_backend_the_tests_compare_is_installed() -> None:
    # The differential test below means little with one backend: CI installs all three.
    assert set(_decoders()) == {"json", "orjson", "msgspec"}


@pytest.mark.parametrize("way", sorted(_decoders()))
@pytest.mark.parametrize(("name", "line", "expected"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_each_hostile_line_is_counted_or_skipped_by_one_rule(
    way: str, name: str, line: bytes, expected: str
) -> None:
    summary = _decoders()[way]([line])
    assert _reason(summary) == expected, name
    rendered = render("table", summary) + render("markdown", summary)
    assert "\x1b" not in rendered


def test_a_log_of_hostile_lines_is_audited_with_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "hostile.jsonl"
    good = json.dumps(call(timestamp="2026-11-27T10:00:00Z")).encode()
    log.write_bytes(b"\n".join([good, *(line for _, line, _ in HOSTILE), good]) + b"\n")
    code = main(["audit", "--format", "json", str(log)])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    expected = [e for _, _, e in HOSTILE]
    assert doc["totals"]["calls"] + doc["totals"]["leaks"] == 2 + expected.count("counted")
    assert doc["skipped_by_reason"]["invalid"] == expected.count("invalid")
    assert doc["skipped_by_reason"]["not_json"] == expected.count("not_json")
    # The invalid dates are left out of the span; the real ones make it.
    assert doc["span"]["first"].startswith("2026-11-27T10:00:00")
    assert doc["span"]["last"].startswith("2026-11-27T10:00:00")
    assert doc["span"]["seconds"] == 0.0


@pytest.mark.parametrize("stamp", ["2026-13-45T25:61:61Z", "0000-01-01T00:00:00Z"])
def test_a_log_whose_only_dates_are_invalid_has_no_span(
    tmp_path: Path, stamp: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "x.jsonl", [call(timestamp=stamp)])
    for fmt in ("table", "markdown", "json"):
        assert main(["audit", "--format", fmt, str(log)]) == 0
    out = capsys.readouterr().out
    assert '"first": null' in out and "span: - to -" in out


# --- the differential test: one rule, every backend ------------------------------------------

_NUMBER_TEXT = st.one_of(
    st.integers().map(str),  # unbounded: beyond 64 bits as often as within
    st.integers(min_value=-(2**64), max_value=2**64).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", "1e308", "1E+309",
                     "0.0", "-0", "1e-400", "2.5e-3", DIGITS_5000, "-" + DIGITS_5000[:19]]),
)  # fmt: skip
_STRING_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["ok", "error", "inference", "no_grad", "gradguard.call", "gradguard.leak",
                     "2026-11-27T10:00:00Z", "2026-13-45T25:61:61Z", "cpu", "\x1b[31m",
                     "req-5e2241", "1e999", ": 123456789012345678901"]),
).map(json.dumps)  # fmt: skip
_VALUE_TEXT = st.one_of(
    _NUMBER_TEXT,
    _STRING_TEXT,
    st.sampled_from(
        [
            "true",
            "false",
            "null",
            "[]",
            "{}",
            "[1, 2]",
            "[1e999]",
            '{"a": -9223372036854775809}',
            "[ 18446744073709551616 ]",
        ]
    ),
)
_FIELDS = ["event", "schema", "target", "wall_ms", "status", "mode", "fallback", "gpu_ms",
           "mem_peak_bytes", "device", "rank", "host", "timestamp", "grad_recorded",
           "training_modules", "call", "pid"]  # fmt: skip


@st.composite
def _hostile_line(draw: st.DrawFn) -> bytes:
    base = draw(st.sampled_from([call(), leak("f"), call(status="error"), {"event": "x"}]))
    event = dict(base)
    replaced = draw(st.dictionaries(st.sampled_from(_FIELDS), _VALUE_TEXT, max_size=3))
    for name in replaced:
        event.pop(name, None)
    body = json.dumps(event)[:-1]
    extra = "".join(f', "{k}": {v}' for k, v in replaced.items())
    line = (body + extra + "}").encode()
    if draw(st.integers(0, 9)) == 0:  # now and then, a line cut short
        line = line[: draw(st.integers(0, len(line)))]
    return line


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_hostile_line(), min_size=1, max_size=8), st.sampled_from(["target", "rank"]))
def test_every_backend_counts_and_skips_the_same_lines(lines: list[bytes], by: str) -> None:
    ways = _decoders()
    results = {name: to_json_dict(decode(lines, by)) for name, decode in ways.items()}
    reference = results.pop("json")
    for name, result in results.items():
        assert result == reference, name


# --- paths ----------------------------------------------------------------------------------


def test_a_symlink_loop_is_read_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs = tmp_path / "logs"
    (logs / "a").mkdir(parents=True)
    write_log(logs / "a" / "run.jsonl", [call()])
    (logs / "a" / "loop").symlink_to(logs, target_is_directory=True)
    (logs / "same.jsonl").symlink_to(logs / "a" / "run.jsonl")
    doc_code = main(["audit", "--format", "json", str(logs / "**" / "*.jsonl")])
    out, err = capsys.readouterr()
    assert doc_code == 0, err
    doc = json.loads(out)
    assert doc["totals"]["calls"] == 1
    assert len(doc["files"]) == 1


def test_the_same_file_under_two_names_is_read_once(tmp_path: Path) -> None:
    log = write_log(tmp_path / "run.jsonl", [call()])
    other = tmp_path / "again.jsonl"
    other.hardlink_to(log)
    paths = _reader.expand_inputs([str(log), str(other), f"{tmp_path}/./run.jsonl"])
    assert paths == [str(log)]
    assert summarize(paths).totals.calls == 1


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_control_characters_in_names_are_escaped(
    tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "evil\x1b[2J\x07\nTOTAL  999\r\u2028"
    log = write_log(tmp_path / "x.jsonl", [call(target=name, device="cpu\x1b[31m"), call()])
    assert main(["audit", "--format", fmt, "--wide", str(log)]) == 0
    out = capsys.readouterr().out
    for char in "\x1b\x07\r\u2028":
        assert char not in out
    assert "evil\\x1b[2J\\x07\\nTOTAL  999\\r\\u2028" in out
    assert "cpu\\x1b[31m" in out
    rows = [line for line in out.splitlines() if "TOTAL" in line]
    assert len(rows) == 2  # the real totals row and the escaped name, on one line each


def test_a_lone_surrogate_in_a_name_is_escaped_not_a_crash(tmp_path: Path) -> None:
    # "\ud800" is valid JSON for a string Python can hold but UTF-8 cannot encode.
    event = call()
    event.pop("target")
    log = tmp_path / "x.jsonl"
    log.write_bytes((json.dumps(event)[:-1] + ', "target": "a\\ud800b"}\n').encode())
    for fmt in ("table", "markdown", "json"):
        proc = _python_m(["audit", "--format", fmt, str(log)])
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"a\\ud800b" in proc.stdout


# --- standard streams, in a subprocess --------------------------------------------------------


def _python_m(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gradguard", *args],
        capture_output="stdout" not in kwargs and "stderr" not in kwargs,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
        **kwargs,
    )


def _one_clear_line(err: bytes, *words: str) -> None:
    text = err.decode()
    assert "Traceback" not in text and "Exception ignored" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith("gradguard audit: error: "), text
    for word in words:
        assert word in lines[0], text


def _with_closed(fd: int, args: list[str]) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m gradguard ARGS`` with descriptor ``fd`` closed, as `cmd <&-` does."""
    command = [sys.executable, "-m", "gradguard", *args]
    launcher = (
        f"import os, subprocess, sys; os.close({fd}); "
        f"sys.exit(subprocess.call({command!r}, cwd={str(ROOT)!r}))"
    )
    return subprocess.run(
        [sys.executable, "-c", launcher],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL if fd != 0 else None,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_a_closed_stdin_is_an_input_error() -> None:
    proc = _python_m(["audit", "-"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.returncode == 0  # /dev/null is an empty log, not a closed stream
    closed = _with_closed(0, ["audit", "-"])
    assert closed.returncode == 2
    _one_clear_line(closed.stderr, "standard input is closed")


def test_a_closed_stdout_is_an_error_with_exit_2(tmp_path: Path) -> None:
    log = write_log(tmp_path / "x.jsonl", [call()])
    proc = _with_closed(1, ["audit", str(log)])
    assert proc.returncode == 2
    _one_clear_line(proc.stderr, "standard output is closed", "--output")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_stdout_on_a_full_device_is_an_error_with_exit_2(tmp_path: Path) -> None:
    log = write_log(tmp_path / "x.jsonl", [call()])
    with open("/dev/full", "wb") as full:
        proc = _python_m(["audit", str(log)], stdout=full, stderr=subprocess.PIPE)
    assert proc.returncode == 2
    _one_clear_line(proc.stderr, "No space left on device", "--output")


def test_output_goes_to_a_file_and_a_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "x.jsonl", [call()])
    report = tmp_path / "report.md"
    assert main(["audit", "--format", "markdown", "--output", str(report), str(log)]) == 0
    assert report.read_text().startswith("# gradguard audit")
    assert not (tmp_path / "report.md.partial").exists()
    assert main(["audit", "--output", str(tmp_path), str(log)]) == 2
    assert "is a directory" in capsys.readouterr().err
