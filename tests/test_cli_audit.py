"""The ``gradguard`` command: audit end to end, exit codes, formats, help, no torch."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from gradguard._cli import main
from tests._audit_helpers import call, leak, random_calls, write_log

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def audit_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = run(["audit", "--format", "json", *argv], capsys)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def python_m(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gradguard", *args],
        input=stdin,
        capture_output=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return write_log(
        tmp_path / "run.jsonl",
        [*random_calls(200, seed=1, targets=("enc", "dec")), leak("enc"), "garbage"],
    )


# --- output ------------------------------------------------------------------------------------

TOP_KEYS = {"schema", "by", "files", "span", "skipped", "skipped_by_reason",
            "relative_accuracy", "groups", "totals", "compare", "fail_on"}  # fmt: skip
GROUP_KEYS = {"key", "calls", "errors", "modes", "fallbacks", "grad_calls", "leaks", "waste",
              "wall_ms", "gpu_ms", "mem_peak_bytes", "devices", "ranks"}  # fmt: skip
STATS_KEYS = {"count", "min", "p50", "p95", "p99", "max"}


def test_json_output_follows_the_documented_contract(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = audit_json([str(log)], capsys)
    assert set(doc) == TOP_KEYS
    assert doc["schema"] == 1
    assert doc["by"] == "target"
    assert doc["files"] == [str(log)]
    assert set(doc["span"]) == {"first", "last", "seconds"}
    assert doc["skipped"] == 1
    assert doc["skipped_by_reason"] == {"not_json": 1, "other_event": 0, "invalid": 0}
    assert [g["key"] for g in doc["groups"]] == ["dec", "enc"]
    for g in [*doc["groups"], doc["totals"]]:
        assert set(g) == GROUP_KEYS
        assert set(g["modes"]) == {"inference", "no_grad"}
        assert set(g["wall_ms"]) == STATS_KEYS
        assert all(isinstance(v, int) for v in g["mem_peak_bytes"].values())
    assert doc["totals"]["key"] is None
    assert doc["totals"]["calls"] == 200
    assert doc["totals"]["leaks"] == 1
    assert doc["compare"] is None
    assert doc["fail_on"] is None


def test_table_output_lists_every_group_and_the_totals(
    log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["audit", str(log)], capsys)
    assert code == 0
    assert err == ""
    rows = {line.split()[0] for line in out.splitlines() if line.strip()}
    assert {"dec", "enc", "TOTAL", "target"} <= rows
    assert "200 calls, 1 leak; skipped 1 line" in out


def test_markdown_output_is_a_pipe_table(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["audit", str(log), "--format", "markdown", "--by", "rank"], capsys)
    assert code == 0
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert table[0].startswith("| rank | calls |")
    assert table[1].startswith("| --- | --: |")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["0", "1", "(none)", "TOTAL"]


@pytest.mark.parametrize("by", ["target", "rank", "host", "device"])
def test_by_groups_on_the_chosen_field(
    by: str, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = audit_json([str(log), "--by", by], capsys)
    expected = {  # the leak event carries a host but no rank or device
        "target": ["dec", "enc"],
        "rank": [0, 1, None],
        "host": ["node-0", "node-1"],
        "device": ["cuda:0", "cuda:1", None],
    }
    assert [g["key"] for g in doc["groups"]] == expected[by]
    assert sum(g["calls"] for g in doc["groups"]) == 200


# --- inputs ------------------------------------------------------------------------------------


def test_many_files_and_globs_merge_in_one_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_log(tmp_path / "a.jsonl", [call(target="x")] * 2)
    write_log(tmp_path / "b.jsonl.gz", [call(target="x"), call(target="y")])
    write_log(tmp_path / "c.log", [call(target="z")])
    doc = audit_json([str(tmp_path / "*.jsonl*"), str(tmp_path / "c.log")], capsys)
    assert {g["key"]: g["calls"] for g in doc["groups"]} == {"x": 3, "y": 1, "z": 1}
    assert len(doc["files"]) == 3


def test_a_truncated_last_line_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = write_log(tmp_path / "a.jsonl", [call(), call()])
    f.write_bytes(f.read_bytes() + json.dumps(call()).encode()[:40])
    doc = audit_json([str(f)], capsys)
    assert (doc["totals"]["calls"], doc["skipped"]) == (2, 1)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_standard_input_is_audited(compress: bool) -> None:
    data = b"".join(json.dumps(call(target="s")).encode() + b"\n" for _ in range(5))
    proc = python_m(["audit", "-", "--format", "json"], gzip.compress(data) if compress else data)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["groups"][0]["key"] == "s"
    assert doc["groups"][0]["calls"] == 5
    assert doc["files"] == ["-"]


# --- exit codes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "bad_event"),
    [
        ("errors", call(status="error")),
        ("leaks", leak()),
        ("fallbacks", call(fallback=True, mode="no_grad")),
        ("grad", call(grad_recorded=True)),
    ],
)
def test_fail_on_exits_1_only_when_the_condition_is_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], condition: str, bad_event: Any
) -> None:
    clean = write_log(tmp_path / "clean.jsonl", [call()])
    dirty = write_log(tmp_path / "dirty.jsonl", [call(), bad_event])
    code, out, err = run(["audit", str(clean), "--fail-on", condition], capsys)
    assert code == 0
    assert "passed" in out
    code, out, err = run(["audit", str(dirty), "--fail-on", condition], capsys)
    assert code == 1
    assert f"failing (--fail-on): {condition}:" in err
    assert "FAILED" in out


@pytest.mark.parametrize(
    "lines",
    [[], ["import torch", "print('not a log')"], [{"event": "request", "ms": 3}]],
    ids=["empty", "a-script", "other-events"],
)
def test_a_log_without_gradguard_events_warns_and_fails_only_on_fail_on_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[Any]
) -> None:
    """A wrong log path must not turn a CI gate green unnoticed: exit codes stay as
    documented, a warning says so, and ``--fail-on empty`` fails."""
    wrong = write_log(tmp_path / "wrong.jsonl", lines)
    code, out, err = run(["audit", str(wrong), "--fail-on", "errors"], capsys)
    assert code == 0
    assert f"gradguard audit: warning: no gradguard events in {wrong}: " in err
    assert "check the path, and that logging was configured" in err
    code, out, err = run(["audit", str(wrong), "--fail-on", "errors,empty"], capsys)
    assert code == 1
    assert "failing (--fail-on): empty: no gradguard events" in err
    assert "FAILED" in out


def test_fail_on_empty_passes_and_nothing_warns_when_events_were_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for events in ([call()], [leak()], [{**leak(), "event": "gradguard.waste"}]):
        good = write_log(tmp_path / "good.jsonl", events)
        code, out, err = run(["audit", str(good), "--fail-on", "empty"], capsys)
        assert (code, err) == (0, ""), events
        assert "passed" in out


def test_an_empty_baseline_is_named_in_the_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    current = write_log(tmp_path / "now.jsonl", [call()])
    base = write_log(tmp_path / "base.jsonl", [])
    code, _, err = run(["audit", str(current), "--compare", str(base)], capsys)
    assert code == 0
    assert f"no gradguard events in the baseline ({base}): no line was read" in err


def test_fail_on_regression_exits_1_on_a_slower_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_log(tmp_path / "base.jsonl", [call(wall_ms=10.0)] * 20)
    slow = write_log(tmp_path / "slow.jsonl", [call(wall_ms=13.0)] * 20)
    same = write_log(tmp_path / "same.jsonl", [call(wall_ms=10.4)] * 20)
    argv = ["--compare", str(base), "--fail-on", "regression", "--format", "json"]
    code, out, _ = run(["audit", str(slow), *argv], capsys)
    assert code == 1
    doc = json.loads(out)
    assert doc["compare"]["regressed"] == ["model.forward"]
    assert doc["fail_on"] == {
        "conditions": ["regression"],
        "failed": ["regression"],
        "details": {"regression": "1 group(s) regressed: model.forward"},
        "exit_code": 1,
    }
    assert run(["audit", str(same), *argv], capsys)[0] == 0
    assert run(["audit", str(slow), *argv, "--threshold", "50%"], capsys)[0] == 0


def test_compare_reports_new_and_vanished_groups(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_log(tmp_path / "base.jsonl", [call(target="old"), call(target="kept")])
    cur = write_log(tmp_path / "cur.jsonl", [call(target="new"), call(target="kept")])
    doc = audit_json([str(cur), "--compare", str(base)], capsys)
    cmp = doc["compare"]
    assert (cmp["new"], cmp["vanished"], cmp["regressed"]) == (["new"], ["old"], [])
    assert cmp["threshold"] == 0.1
    assert cmp["baseline"]["files"] == [str(base)]
    assert {g["key"]: g["status"] for g in cmp["groups"]} == {
        "kept": "unchanged", "new": "new", "old": "vanished"
    }  # fmt: skip
    kept = next(g for g in cmp["groups"] if g["key"] == "kept")
    assert set(kept["wall_ms_p95"]) == {"baseline", "current", "change"}
    code, out, _ = run(["audit", str(cur), "--compare", str(base)], capsys)
    assert code == 0
    assert "compare with baseline" in out
    assert "1 new, 1 vanished" in out


def test_baselines_may_come_first_when_ended_with_a_double_dash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write_log(tmp_path / "base.jsonl", [call(target="a")])
    cur = write_log(tmp_path / "cur.jsonl", [call(target="b")])
    doc = audit_json(["--compare", str(base), "--", str(cur)], capsys)
    assert doc["files"] == [str(cur)]
    assert doc["compare"]["baseline"]["files"] == [str(base)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["audit"], "the following arguments are required: FILE_OR_GLOB"),
        (["audit", "{log}", "--by", "pid"], "invalid choice: 'pid'"),
        (["audit", "{log}", "--format", "xml"], "invalid choice: 'xml'"),
        (["audit", "{log}", "--threshold", "10"], "with a % sign, e.g. 10%; got '10'"),
        (["audit", "{log}", "--threshold", "abc%"], "a number followed by %"),
        (["audit", "{log}", "--threshold=-5%"], "non-negative percentage"),
        (["audit", "{log}", "--fail-on", "errors,slow"], "unknown condition 'slow'"),
        (["audit", "{log}", "--fail-on", ","], "give at least one condition"),
        (["audit", "{log}", "--fail-on", "regression"], "needs a baseline: add --compare"),
        (["audit", "{log}", "--bogus"], "unrecognized arguments: --bogus"),
        (["audit", "-", "--compare", "-"], "standard input (-) can be read only once"),
        (["nope"], "invalid choice: 'nope'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, log: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([a.replace("{log}", str(log)) for a in argv], capsys)
    assert code == 2
    assert message in err
    assert out == ""


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([], capsys)
    assert code == 2
    assert "audit" in err and "demo" in err


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "no such file"),
        ("*.nothing", None, "no file matches the pattern"),
        ("corrupt.jsonl.gz", b"\x1f\x8b\x08\x00garbage-not-deflate", "corrupt or cut short"),
        ("cut.jsonl.gz", gzip.compress(b'{"a": 1}\n' * 500)[:-20], "corrupt or cut short"),
    ],
)
def test_unreadable_inputs_exit_2_with_a_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes | None,
    message: str,
) -> None:
    target = tmp_path / name
    if content is not None:
        target.write_bytes(content)
    code, out, err = run(["audit", str(target), "--fail-on", "errors"], capsys)
    assert code == 2
    assert err.startswith("gradguard audit: error: ")
    assert message in err
    assert out == ""


def test_an_unreadable_baseline_exits_2(
    log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["audit", str(log), "--compare", str(tmp_path / "no.jsonl")], capsys)
    assert code == 2
    assert "no such file" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("flag", [[], ["--no-progress"]], ids=["default", "no-progress"])
def test_progress_shows_on_a_terminal_for_large_inputs_unless_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flag: list[str]
) -> None:
    big = write_log(tmp_path / "big.jsonl", random_calls(12_000))
    assert big.stat().st_size > 5 << 20
    tty = _Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert main(["audit", str(big), *flag]) == 0
    if flag:
        assert tty.getvalue() == ""
    else:
        assert re.search(r"\] +\d+% [\d.]+/6\.\d MB", tty.getvalue())
        assert tty.getvalue().endswith("\r\x1b[K")  # the line is erased at the end


# --- help and demo -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--help"], "usage: gradguard"),
        (["audit", "--help"], "--fail-on"),
        (["demo", "--help"], "usage: gradguard demo"),
    ],
)
def test_every_command_has_help(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert expected in out


def test_demo_without_its_module_exits_2_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gradguard._demo", None)  # importing it raises ImportError
    code, _, err = run(["demo"], capsys)
    assert code == 2
    assert "gradguard demo: error: the demo is not available" in err


def test_demo_help_works_even_without_its_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gradguard._demo", None)
    code, out, _ = run(["demo", "--help"], capsys)
    assert code == 0
    assert "usage: gradguard demo" in out


def test_a_demo_exit_with_a_message_becomes_status_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_main(argv: list[str]) -> int:
        raise SystemExit("--device cuda: no CUDA device")

    monkeypatch.setitem(sys.modules, "gradguard._demo", types.SimpleNamespace(main=fake_main))
    code, _, err = run(["demo", "--device", "cuda"], capsys)
    assert code == 1
    assert "--device cuda: no CUDA device" in err


def test_demo_gets_the_remaining_arguments(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    monkeypatch.setitem(sys.modules, "gradguard._demo", types.SimpleNamespace(main=fake_main))
    assert run(["demo", "--steps", "3", "--help"], capsys)[0] == 7
    assert seen == [["--steps", "3", "--help"]]


# --- the process as a whole ------------------------------------------------------------------


def test_the_audit_does_not_import_torch(log: Path) -> None:
    script = (
        "import runpy, sys\n"
        f"sys.argv = ['gradguard', 'audit', {str(log)!r}]\n"
        "try:\n"
        "    runpy.run_module('gradguard', run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    code = exc.code\n"
        "print('torch' in sys.modules, code)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines()[-1] == "False 0"


def test_python_m_gradguard_runs_the_audit_quietly_off_a_terminal(log: Path) -> None:
    proc = python_m(["audit", str(log), "--fail-on", "leaks"])
    assert proc.returncode == 1
    assert b"TOTAL" in proc.stdout
    assert proc.stderr.startswith(b"gradguard audit: failing (--fail-on): leaks: 1 leak(s)")
    assert b"\r" not in proc.stderr  # no progress line


# --- the table's width and columns ------------------------------------------------------------


def test_the_default_table_fits_120_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    targets = ("encoder.forward.layer_stack", "decoder.generate", "m" * 80)
    events = list(random_calls(3000, seed=3, targets=targets))
    log = write_log(tmp_path / "run.jsonl", [*events, *(call(status="error") for _ in range(9))])
    code, out, _ = run(["audit", str(log)], capsys)
    assert code == 0
    assert max(len(line) for line in out.splitlines()) <= 120, out
    header = next(line for line in out.splitlines() if line.startswith("target"))
    assert header.split()[1:4] == ["calls", "errors", "fallbacks"]
    assert "gpu p95" in header and "ranks" in header
    assert "m" * 80 not in out  # shortened in the middle, not cut off
    code, wide, _ = run(["audit", "--wide", str(log)], capsys)
    assert "m" * 80 in wide
    assert max(len(line) for line in wide.splitlines()) > 120


def test_columns_that_are_empty_everywhere_are_left_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "cpu.jsonl", [call(), call(wall_ms=3.0)])  # no gpu_ms, no rank
    _, out, _ = run(["audit", str(log)], capsys)
    header = next(line for line in out.splitlines() if line.startswith("target"))
    assert "gpu" not in header and "ranks" not in header
    assert "wall p95" in header and "mem max" in header
    _, wide, _ = run(["audit", "--wide", str(log)], capsys)
    header = next(line for line in wide.splitlines() if line.startswith("target"))
    for name in ("gpu p50", "gpu max", "devices", "ranks", "inference", "no_grad"):
        assert name in header


def test_columns_picks_and_orders_the_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "cpu.jsonl", [call(), call()])
    code, out, _ = run(["audit", "--columns", "wall-max,calls,gpu_p50", str(log)], capsys)
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("target"))
    assert header.split() == ["target", "wall", "max", "calls", "gpu", "p50"]
    code, md, _ = run(["audit", "--format", "markdown", "--columns", "leaks", str(log)], capsys)
    assert "| target | leaks |" in md


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--columns", "calls,speed"], "unknown column 'speed'"),
        (["--columns", ","], "unknown column nothing"),
        (["--columns", "calls", "--wide"], "not allowed with argument"),
    ],
)
def test_bad_columns_are_usage_errors(
    log: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["audit", *argv, str(log)], capsys)
    assert code == 2
    assert message in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import gradguard

    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"gradguard {gradguard.__version__}"


def test_an_interrupt_is_one_line_and_status_130(
    log: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import gradguard._cli as cli

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "summarize", interrupted)
    code, _, err = run(["audit", str(log)], capsys)
    assert code == 130
    assert err == "gradguard: interrupted\n"
