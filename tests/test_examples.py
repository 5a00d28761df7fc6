"""The README's quick start and the example scripts run as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quick_start_runs(capsys: pytest.CaptureFixture[str]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```python\n(.*?)```", readme, re.S)
    assert block is not None, "the README lost its quick start"
    assert len(block.group(1).splitlines()) <= 20
    exec(compile(block.group(1), "README.md", "exec"), {"__name__": "readme"})
    assert "mode='inference'" in capsys.readouterr().out


def test_quickstart_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "after the call               training=True  grad=True" in result.stdout
    assert "saliency runs under: no_grad" in result.stdout


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("bench_core.py", "model.eval(); model.train()"),
        ("bench_telemetry.py", "full event to a file"),
    ],
)
def test_benchmarks_run_at_a_tiny_size(script: str, expected: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "benchmarks" / script),
            "--number",
            "200",
            "--repeat",
            "1",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert expected in result.stdout
    assert "@torch.inference_mode()" in result.stdout
