"""The scan's example scripts run as written, and print the figures the docs quote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, *args],
        capture_output=True, text=True, check=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    return result.stdout


def test_the_seed_example_reports_the_articles_bytes_at_a_tenth() -> None:
    out = run("examples/scan_seed.py")
    assert "graph_unused at examples/scan_seed.py:" in out
    assert "(__main__.SimpleModel)" in out
    assert "kept for backward, for nothing:     2,000,000 bytes (   1.91 MiB)" in out
    assert "the output, kept by every mode:       200,000 bytes (   0.19 MiB)" in out
    assert "in all, with gradients:             2,200,000 bytes (   2.10 MiB)" in out


def test_the_unguarded_example_runs_on_its_own() -> None:
    # Under the scan in tests/test_cli_scan.py; here as a plain program.
    out = run("examples/unguarded_eval.py")
    assert "accuracy:" in out and out.count("predicted 1000 labels") == 3


def test_the_scan_benchmark_runs_at_a_tiny_size() -> None:
    out = run("examples/benchmarks/bench_scan.py", "--number", "200", "--repeat", "1")
    assert "µs bare" in out and "µs scanned" in out  # each figure beside torch's own
    assert "per module call in evaluation code:" in out
    assert "per saved tensor in a recorded graph:" in out
