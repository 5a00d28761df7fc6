"""``gradguard scan``: run a program under the scan, report, log, and exit as documented."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradguard._cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "unguarded_eval.py"


def line_of(path: Path, text: str) -> int:
    """The line number of the first line of ``path`` containing ``text``."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if text in line:
            return number
    raise AssertionError(f"{text!r} not in {path}")


def scan(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gradguard", "scan", *args],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=300,
    )  # fmt: skip


def test_the_example_shows_both_findings_with_their_lines_and_bytes() -> None:
    result = scan("examples/unguarded_eval.py")
    assert result.returncode == 0, result.stderr
    assert "accuracy:" in result.stdout  # the program ran, with its own output
    predict = line_of(EXAMPLE, "logits = model(x)")
    evaluate = line_of(EXAMPLE, "correct += int(")
    rows = [
        line.split() for line in result.stdout.splitlines() if line.startswith(("graph", "train"))
    ]
    assert [r[:4] for r in rows] == [
        ["graph_unused", f"examples/unguarded_eval.py:{predict}", "__main__.Classifier", "3"],
        ["training_mode", f"examples/unguarded_eval.py:{evaluate}", "__main__.Classifier", "4"],
    ]
    # Per call: three 1000 x 512 float32 activations kept for backward.
    assert "6,144,000 B (5.86 MiB)" in result.stdout
    assert "BatchNorm1d (running statistics updated), Dropout" in result.stdout


def test_json_report_and_fail_on(tmp_path: Path) -> None:
    result = scan("--format", "json", "--fail-on", "graph_unused", "examples/unguarded_eval.py")
    assert result.returncode == 1
    assert "failing (--fail-on): 1 finding(s) of graph_unused" in result.stderr
    start = result.stdout.index("{\n")
    doc = json.loads(result.stdout[start:])
    assert doc["schema"] == 1
    assert [(f["kind"], f["calls"], f["bytes_max"], f["bytes_total"]) for f in doc["findings"]] == [
        ("graph_unused", 3, 6_144_000, 18_432_000),
        ("training_mode", 4, 0, 0),
    ]


def test_markdown_report() -> None:
    result = scan("--format", "markdown", "examples/unguarded_eval.py")
    assert result.returncode == 0
    assert "| # | kind | where | module |" in result.stdout
    assert "| 1 | graph_unused | `examples/unguarded_eval.py:" in result.stdout


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


PROGRAM = """\
import sys
import torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout())
print("argv", sys.argv[1:])
with torch.no_grad():
    model(torch.ones(2, 4))
out = model(torch.ones(2, 4))  # still alive when the program ends
if "--fail" in sys.argv:
    raise SystemExit(3)
if "--crash" in sys.argv:
    raise ValueError("the program's own error")
"""


def test_a_program_gets_its_own_argv_and_graphs_alive_at_the_end_count(tmp_path: Path) -> None:
    script = write(tmp_path / "prog.py", PROGRAM)
    result = scan("--fail-on", "all", str(script), "a", "--b", cwd=tmp_path)
    assert "argv ['a', '--b']" in result.stdout
    assert result.returncode == 1
    lines = [line.split()[:2] for line in result.stdout.splitlines() if "prog.py:" in line][:2]
    assert lines == [["graph_unused", "prog.py:8"], ["training_mode", "prog.py:7"]]


@pytest.mark.parametrize(("flag", "status"), [("--fail", 3), ("--crash", 1)])
def test_a_failing_program_exits_with_its_own_status_and_findings_are_reported(
    tmp_path: Path, flag: str, status: int
) -> None:
    script = write(tmp_path / "prog.py", PROGRAM)
    result = scan("--fail-on", "graph_unused", str(script), flag, cwd=tmp_path)
    assert result.returncode == status
    assert "graph_unused" in result.stdout and "prog.py:8" in result.stdout
    if flag == "--crash":
        assert "ValueError: the program's own error" in result.stderr
        assert "_runner.py" not in result.stderr  # the traceback is the program's
        assert "runpy" not in result.stderr


def test_dash_m_runs_a_module_with_its_arguments(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    write(package / "__init__.py", "")
    write(package / "job.py", PROGRAM)
    result = scan("-m", "pkg.job", "x", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "argv ['x']" in result.stdout
    assert os.path.join("pkg", "job.py") + ":8" in result.stdout


def test_log_file_events_are_counted_by_the_audit(tmp_path: Path) -> None:
    log = tmp_path / "waste.jsonl"
    result = scan("--log-file", str(log), "examples/unguarded_eval.py")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in log.read_text().splitlines()]
    predict = line_of(EXAMPLE, "logits = model(x)")
    evaluate = line_of(EXAMPLE, "correct += int(")
    assert [(e["event"], e["kind"], e["target"]) for e in events] == [
        ("gradguard.waste", "graph_unused",
         f"__main__.Classifier at examples/unguarded_eval.py:{predict}"),
        ("gradguard.waste", "training_mode",
         f"__main__.Classifier at examples/unguarded_eval.py:{evaluate}"),
    ]  # fmt: skip
    audit = subprocess.run(
        [sys.executable, "-m", "gradguard", "audit", str(log), "--format", "json",
         "--fail-on", "waste"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert audit.returncode == 1
    doc = json.loads(audit.stdout)
    assert doc["totals"]["waste"] == 2
    assert doc["skipped"] == 0
    assert {g["key"]: g["waste"] for g in doc["groups"]} == {e["target"]: 1 for e in events}
    assert "waste: 2 gradguard scan finding(s)" in audit.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scan"], "give the program to scan"),
        (["scan", "missing.py"], "'missing.py' does not exist"),
        (["scan", "-m"], "-m needs a module name"),
        (["scan", "-m", "no_such_module_here"], "no module named 'no_such_module_here'"),
        (["scan", "--fail-on", "graph", "x.py"], "unknown kind 'graph'"),
        (["scan", "--format", "xml", "x.py"], "invalid choice: 'xml'"),
        (["scan", "--log-file", "/no/such/dir/log.jsonl", "examples/unguarded_eval.py"],
         "--log-file"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2_before_the_program_starts(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert "accuracy" not in captured.out  # the program never ran


def test_help_lists_the_kinds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scan", "--help"]) == 0
    out = capsys.readouterr().out
    assert "training_mode_deliberate" in out and "-m MODULE" in out


def test_the_audit_counts_waste_events_the_same_on_every_decoding_path() -> None:
    from gradguard._audit import Collector
    from gradguard._scan import ScanFinding
    from gradguard._scan._report import waste_events

    findings = [
        ScanFinding("graph_unused", "a.py:3", "m.Net", 2, 10, 20, "fix it"),
        ScanFinding("training_mode", "a.py:9", "m.Net", 1, 0, 0, "fix it"),
    ]
    call = {"event": "gradguard.call", "schema": 1, "target": "m.Net at a.py:3",
            "wall_ms": 1.0, "status": "ok", "mode": "inference", "fallback": False}  # fmt: skip
    data = [json.dumps(e).encode() for e in [*waste_events(findings), call]]
    fast, exact = Collector(), Collector()
    fast.feed(data)  # msgspec's typed batches when it is installed
    exact.feed(data, loads=json.loads)
    for summary in (fast.summary(), exact.summary()):
        assert summary.skipped == 0
        assert {g.key: (g.calls, g.waste) for g in summary.groups} == {
            "m.Net at a.py:3": (1, 1),
            "m.Net at a.py:9": (0, 1),
        }
        assert summary.totals.waste == 2
