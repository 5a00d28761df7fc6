"""The README's quick start and the example scripts run as written."""

from __future__ import annotations

import os
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
        ("bench_core.py", ("model.eval(); model.train()", "@torch.inference_mode()")),
        ("bench_common.py", ("3-module model in eval", "@torch.inference_mode() (")),
        ("bench_telemetry.py", ("full event to a file", "@torch.inference_mode()")),
        ("bench_leaks.py", ("a gradguard-made tensor alive", "a global hook doing nothing")),
        pytest.param(
            "bench_compile.py",
            ("torch.compile(gradguard.guard(model))", "bare torch.compile(model)"),
            marks=pytest.mark.slow,  # compiles three times
        ),
    ],
)
def test_benchmarks_run_at_a_tiny_size(script: str, expected: tuple[str, str]) -> None:
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
    for line in expected:  # a figure and the bare torch one beside it
        assert line in result.stdout


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("fork", "--forks", "3"), "fork: 3 forks, 0 wrong children, 0 hangs"),
        (("signals", "--interrupts", "50"), "signals: 50 interrupts, 0 stale states"),
    ],
)
def test_stress_core_runs_at_a_tiny_size(args: tuple[str, ...], expected: str) -> None:
    script = ROOT / "examples" / "benchmarks" / "stress_core.py"  # full size: test_stress.py
    result = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == expected


def run_example(name: str, *args: str, timeout: float = 120) -> str:
    """Run ``examples/<name>`` as a user would, from another folder; return its output."""
    command = ["bash"] if name.endswith(".sh") else [sys.executable]
    result = subprocess.run(
        [*command, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT / "tests",
        env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_serving_example_carries_request_ids_and_restores_flags() -> None:
    out = run_example("serving.py")
    assert "request_id=warm-up" in out  # through structlog's defaults, unconfigured
    assert "events in the log file: 32, 16 request ids" in out
    assert "every event carries the id of the request that made it: True" in out
    assert "inside every forward (training, inference_mode): [(False, True)]" in out
    assert "same labels as model.eval() + torch.inference_mode(), one at a time: True" in out
    assert (
        "after the requests: model.training=True, frozen BatchNorm training=False, "
        "every other module training=True, grad enabled=True"
    ) in out


@pytest.mark.slow
def test_distillation_example_shows_the_leak_and_the_fixes() -> None:
    out = run_example("distillation_leak.py")
    assert (
        "LeakWarning: gradguard: an inference tensor made by teacher (call 1) "
        "enters the MSELoss module"
    ) in out
    assert "then torch's own error: RuntimeError: Inference tensors cannot be saved" in out
    assert (
        "inside watch_leaks(level='strict'): LeakError: gradguard: an inference tensor "
        "made by teacher (call 3) enters torch operation mse_loss"
    ) in out
    fixed = [line for line in out.splitlines() if "20 steps, loss" in line]
    assert len(fixed) == 3
    for fix in ("outputs='clone'", "mode='no_grad'", "clone() outside inference mode"):
        assert any(fix in line for line in fixed), fix
    assert "teacher back in training mode: True; student: True" in out


@pytest.mark.slow
def test_seed_article_example_reads_the_articles_table_from_the_logs() -> None:
    out = run_example("seed_article.py")
    assert "66 events read back from" in out
    assert "no_grad keeps 90.9% less memory than with gradients" in out
    assert re.search(
        r"inference_mode keeps (\S+) MB, no_grad \1 MB \(the output alone: \1 MB\)", out
    )
    assert re.search(r"article\.with_gradients\s+no_grad\s+True\s+2\.10 MB", out)
    assert re.search(r"article\.inference_mode\s+inference\s+False\s+0\.19 MB", out)
    assert "events: 66 calls, 0 leaks" in out  # gradguard audit of the same file


@pytest.mark.slow
def test_transformers_example_generates_as_eval_and_inference_mode() -> None:
    pytest.importorskip("transformers", reason="pip install -e '.[integrations]' (or '.[test]')")
    out = run_example("transformers_generate.py")
    for line in (
        "still a PreTrainedModel: True, same config: True",
        "guarded greedy generate equals eval + inference_mode: True",
        "inside generate: 8 forwards, in eval: True, in inference_mode: True",
        "after generate: training=True grad=True inference_mode=False",
        "the output is an inference tensor: True",
        "events logged: 1",
        "  gradguard.call target=tiny-gpt2.generate kind=module mode=inference status=ok",
        "describe: tiny-gpt2.generate mode=inference calls=1",
    ):
        assert line in out, line


@pytest.mark.slow
def test_audit_ci_example_gates() -> None:
    out = run_example("audit_ci.sh")
    assert "gate 1 passed: errors,leaks,fallbacks,grad (exit 0)" in out
    assert "gate 2 failed as expected: regression (exit 1); a CI job would stop here" in out
    assert "  regression: 1 group(s) regressed: model" in out


@pytest.mark.slow
def test_audit_benchmark_runs_at_a_tiny_size() -> None:
    out = run_example("benchmarks/bench_audit.py", "-n", "2000", "--repeat", "1")
    assert re.search(r"audit with json\s+:\s+[\d,]+ records/s", out)
    assert "records: tracemalloc peak" in out


@pytest.mark.slow
def test_cuda_benchmark_runs_on_the_cpu_at_a_tiny_size() -> None:
    out = run_example(
        "benchmarks/bench_cuda.py", "--device", "cpu", "--number", "20", "--repeat", "1"
    )
    assert "@torch.inference_mode()" in out and "gradguard, sync=True" in out
    assert "the same, memory=False" in out


def test_every_example_is_run_by_a_test() -> None:
    """A new example without a test here (or in its integration test file) fails."""
    tested = Path(__file__).read_text(encoding="utf-8")
    tested += (ROOT / "tests" / "test_integrations_processes.py").read_text(encoding="utf-8")
    tested += (ROOT / "tests" / "test_scan_examples.py").read_text(encoding="utf-8")
    for path in sorted((ROOT / "examples").rglob("*")):
        if path.suffix in (".py", ".sh") and not path.name.startswith("_"):
            assert path.name in tested, f"{path.relative_to(ROOT)} is run by no test"


def _extras() -> dict[str, list[str]]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    return extras


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ]", r, maxsplit=1)[0] for r in requirements}


def test_the_readme_demo_install_brings_numpy() -> None:
    # torch 2.13 warns "Failed to initialize NumPy" at import where numpy is missing:
    # the main job's install command must bring it.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"Main job, the demo: `(pip install [^`]*)`", readme)
    assert command is not None
    extra = re.search(r'"\.\[(\w+)\]"', command.group(1))
    assert extra is not None, command.group(1)
    assert "numpy" in _names(_extras()[extra.group(1)])


def test_the_examples_extra_brings_what_the_examples_import() -> None:
    extras = _extras()
    examples = _names(extras["examples"])
    assert "transformers" in examples
    assert "gradguard" in examples and "gradguard[demo]" in extras["examples"]
    assert "torchvision" not in {n for reqs in extras.values() for n in _names(reqs)}


def test_the_readme_says_how_to_run_every_example() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8").replace("\n  ", " ")
    assert 'pip install -e ".[examples]"' in readme
    for path in sorted((ROOT / "examples").glob("*")):
        if path.suffix in (".py", ".sh") and not path.name.startswith("_"):
            runner = "bash" if path.suffix == ".sh" else "python"
            command = f"{runner} examples/{path.name}"
            if path.name == "torchrun_ddp.py":
                command = f"--nproc_per_node=2 examples/{path.name}"
            assert command in readme, path.name


def test_importing_torch_gives_no_numpy_warning() -> None:
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", "import torch"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "NumPy" not in result.stderr, result.stderr
