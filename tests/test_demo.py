"""gradguard demo: the seed article's experiment, at a tiny size."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from torch import nn

from gradguard._demo import MIN_ROUNDS, judge, main, spread, time_rounds, verdict
from tests._audit_helpers import call

ROOT = Path(__file__).resolve().parents[1]

TINY = ["--in-features", "8", "--hidden", "64", "--out-features", "4", "--batch", "3"]


def tiny_model() -> nn.Module:
    """A factory for --model."""
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 2))


def rows(out: str) -> dict[str, list[str]]:
    found = {}
    for label in (
        "with gradients",
        "torch.no_grad()",
        "torch.inference_mode()",
        "gradguard.guard(model)",
    ):
        line = next(line for line in out.splitlines() if line.startswith(label))
        found[label] = line[len(label) :].split()
    return found


def size(tokens: list[str]) -> float:
    """Bytes from the demo's "195.3 KiB" cells (two tokens)."""
    number, unit = float(tokens[0].replace(",", "")), tokens[1]
    return number * {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3}[unit]


def test_demo_reproduces_the_article_at_a_tiny_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "demo.jsonl"
    assert main([*TINY, "--repeat", "2", "--device", "cpu", "--log-file", str(log)]) == 0
    out = capsys.readouterr().out
    table = rows(out)
    grad, no_grad, inference, guarded = (table[k] for k in table)
    assert grad[:2] == ["True", "AddmmBackward0"]
    for row in (no_grad, inference, guarded):
        assert row[:2] == ["False", "None"]
    output_bytes = 3 * 4 * 4  # the 3 x 4 float32 output
    relu_bytes = 3 * 64 * 4  # the activations autograd keeps for backward
    # Exact, in a unit that does not round a few bytes to zero.
    assert no_grad[2:4] == inference[2:4] == guarded[2:4] == ["48", "B"]
    assert size(grad[2:4]) == output_bytes + relu_bytes
    assert "-100.0%" not in out
    assert "CPU-only run" not in out  # sizes were given: no word of the default's scaling
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["target"] for e in events} == {"demo.guard", "demo.guard.memory"}
    assert next(e for e in events if e["target"] == "demo.guard.memory")["mem_kind"] == "tensors"
    assert re.search(r"^demo\.guard\s+\d+\s+0\s+", out, re.M)  # the audit's table at the end
    assert "too few rounds" in out  # 2 rounds: no conclusion about speed
    assert f"events are in {log}" in out


def test_the_log_file_is_appended_to_and_the_audit_reads_only_this_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "demo.jsonl"
    earlier = json.dumps(call(target="earlier.run")) + "\n"
    log.write_text(earlier * 3)
    argv = [*TINY, "--repeat", "5", "--device", "cpu", "--log-file", str(log)]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert log.read_text().startswith(earlier * 3)  # never truncated
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert sum(c["target"] == "demo.guard" for c in calls) == 2 * (5 + 2 + 1)
    for out in (first, second):
        assert "earlier.run" not in out
        # 5 timed rounds, 2 warm-up ones and the memory call: this run's only.
        assert re.search(r"^demo\.guard\s+8\s+0\s+", out, re.M), out


def test_the_temporary_log_is_removed_unless_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    assert main([*TINY, "--repeat", "1", "--device", "cpu"]) == 0
    assert list(tmp_path.iterdir()) == []
    assert "now removed" in capsys.readouterr().out
    assert main([*TINY, "--repeat", "1", "--device", "cpu", "--keep"]) == 0
    kept = list(tmp_path.glob("gradguard-demo-*/demo.jsonl"))
    assert len(kept) == 1
    assert f"events are in {kept[0]}" in capsys.readouterr().out


def test_demo_on_the_users_own_model(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", f"{__name__}:tiny_model", "--input-shape", "5,6", "--repeat", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"{__name__}:tiny_model, input 5,6" in out
    assert rows(out)["gradguard.guard(model)"][:2] == ["False", "None"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nowhere"], "--model must look like module:factory"),
        (["--model", "os:getcwd", "--input-shape", "2"], "returned a str, not an nn.Module"),
        (["--model", f"{__name__}:tiny_model"], "--model needs --input-shape"),
        (["--repeat", "0"], "argument --repeat: must be a positive whole number"),
        (["--device", "cuda:7"], "cuda"),
        (["--device", "meta"], "the demo runs on cpu"),
        (["--device", "gpu"], "--device 'gpu'"),
        (["--hidden", "many"], "invalid int value"),
        (["--hidden", "-5"], "must be a positive whole number"),
        (["--batch", "0"], "must be a positive whole number"),
        (["--hidden", str(10**12), "--device", "cpu"], "cannot build the model at these sizes"),
        (["--model", "no_such_module_here:build", "--input-shape", "2"], "cannot load it"),
        (["--model", f"{__name__}:TINY", "--input-shape", "2"], "names a list"),
        (["--model", f"{__name__}:tiny_model", "--input-shape", "2,x"], "--input-shape must"),
        (["--model", f"{__name__}:tiny_model", "--input-shape", "0,6"], "--input-shape must"),
        (
            ["--model", f"{__name__}:tiny_model", "--input-shape", "2,6", "--input-dtype", "nn"],
            "--input-dtype must name a torch dtype",
        ),
        (
            ["--model", f"{__name__}:tiny_model", "--input-shape", "2,7"],
            "the model cannot run on this input",
        ),
        (["--log-file", "."], "is a directory"),
        (["--log-file", "/no/such/folder/demo.jsonl"], "cannot write to it"),
        (["--log-file", "x-{pid}.jsonl"], "plain path"),
    ],
)
def test_bad_demo_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_demo_help_through_the_command_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gradguard", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--input-shape" in result.stdout and "--full" in result.stdout


def test_the_console_script_imports_the_model_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "mymodel.py").write_text(
        "from torch import nn\n\ndef build():\n    return nn.Linear(3, 2)\n"
    )
    # A console script runs with its own folder first on sys.path, not the current one.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "gradguard"
    script.write_text("import sys\nfrom gradguard._cli import main\nsys.exit(main())\n")
    argv = ["demo", "--model", "mymodel:build", "--input-shape", "4,3", "--repeat", "1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, str(script), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "mymodel:build, input 4,3" in result.stdout
    assert str(tmp_path) not in sys.path


def test_the_demo_does_not_import_the_command_line() -> None:
    # The demo calls the audit's functions; going through argv made an import circle.
    source = (ROOT / "gradguard" / "_demo.py").read_text()
    assert "_cli" not in source


# --- the figures, on synthetic timings ----------------------------------------------------


def test_spread_is_the_median_and_range() -> None:
    assert spread([3.0, 1.0, 2.0, 10.0]) == (2.5, 1.0, 10.0)


def test_a_steady_difference_is_a_conclusion() -> None:
    base = [10.0, 12.0, 30.0, 11.0, 10.5, 25.0, 10.2, 11.1]  # a busy machine: wild rounds
    new = [b * 0.9 for b in base]  # yet every round 10% faster
    j = judge(new, base)
    assert j.conclusive
    assert j.change == pytest.approx(-0.1)
    assert "faster in at least 80% of the 8 rounds" in verdict("new", "old", j)
    assert verdict("old", "new", judge(base, new)).endswith(
        "slower in at least 80% of the 8 rounds"
    )


def test_rounds_that_disagree_are_no_conclusion() -> None:
    base = [10.0] * 10
    new = [7.0, 13.0, 8.0, 12.5, 9.0, 14.0, 6.5, 11.0, 8.0, 13.5]  # median +5%, both ways
    j = judge(new, base)
    assert not j.conclusive
    assert j.low < 0 < j.high
    assert "cannot tell them apart" in verdict("new", "old", j)


def test_one_wild_round_does_not_stop_a_conclusion_but_two_in_ten_do() -> None:
    base = [10.0] * 10
    one = [9.0] * 9 + [30.0]
    assert judge(one, base).conclusive
    two = [9.0] * 8 + [30.0, 30.0]
    assert not judge(two, base).conclusive


def test_too_few_rounds_are_never_a_conclusion() -> None:
    base = [10.0] * (MIN_ROUNDS - 1)
    j = judge([5.0] * (MIN_ROUNDS - 1), base)
    assert not j.conclusive
    assert "too few rounds" in verdict("new", "old", j)


def test_judge_needs_pairs() -> None:
    with pytest.raises(ValueError, match="same number of timings"):
        judge([1.0], [1.0, 2.0])


def test_rounds_are_interleaved_in_a_rotating_order() -> None:
    order: list[str] = []
    calls = [lambda name=name: order.append(name) for name in "abc"]
    ticks = iter(range(1000))
    times = time_rounds(calls, 3, warmup=1, clock=lambda: float(next(ticks)))
    assert order == list("abcbcacababc")
    assert [len(t) for t in times] == [3, 3, 3]  # the warm-up round dropped
    assert all(t == pytest.approx(1e3) for ts in times for t in ts)
