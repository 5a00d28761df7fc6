"""The stress scripts of examples/benchmarks/stress_core.py, at full size (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "examples" / "benchmarks" / "stress_core.py"


def run(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@pytest.mark.slow
def test_fork_with_threads_inside_guarded_calls_100_forks() -> None:
    assert run("fork", "--forks", "100") == "fork: 100 forks, 0 wrong children, 0 hangs"


@pytest.mark.slow
def test_signal_storm_of_10000_interrupts_leaves_no_stale_state() -> None:
    assert run("signals", "--interrupts", "10000") == "signals: 10000 interrupts, 0 stale states"
