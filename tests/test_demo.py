"""gradguard demo: the seed article's experiment, at a tiny size."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from torch import nn

from gradguard._demo import main

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


def mb(text: str) -> float:
    return float(text.replace(",", ""))


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
    output_mb = 3 * 4 * 4 / 1024**2  # the 3 x 4 float32 output
    relu_mb = 3 * 64 * 4 / 1024**2  # the activations autograd keeps for backward
    assert mb(no_grad[2]) == mb(inference[2]) == mb(guarded[2]) == round(output_mb, 2)
    assert mb(grad[2]) == round(output_mb + relu_mb, 2)
    assert "CPU-only run" not in out  # sizes were given: no word of the default's scaling
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {e["target"] for e in events} == {"demo.guard", "demo.guard.memory"}
    assert next(e for e in events if e["target"] == "demo.guard.memory")["mem_kind"] == "tensors"
    assert re.search(r"^demo\.guard\s+\d+\s+0\s+", out, re.M)  # the audit's table at the end


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
        (["--repeat", "0"], "--repeat must be a positive number"),
        (["--device", "cuda:7"], "cuda"),
        (["--hidden", "many"], "invalid int value"),
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
