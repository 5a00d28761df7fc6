"""Cost of a guard around a compiled model, both ways round, beside the bare compiled model.

Run: python examples/benchmarks/bench_compile.py [--backend inductor]

Times, in one run and interleaved, a call of:
  - the bare compiled model under ``torch.inference_mode()`` (the torch equivalent),
  - ``gradguard.guard(model)``, eager,
  - ``gradguard.guard(torch.compile(model))``,
  - ``torch.compile(gradguard.guard(model))``,
after warm-up, and the ratio of the last two (the goal: at most 1.1x). It also counts the
frames dynamo compiled during the timed rounds: none means no recompilation.
"""

from __future__ import annotations

import argparse
import os
import warnings

import torch
from _timing import compare_us  # beside this script
from torch import nn

import gradguard


def mlp() -> nn.Module:
    """A small MLP with dropout, kept in training mode: the guard switches it to eval.

    Small, so that the figures show what the wrappers cost rather than the matmuls.
    """
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 4)).train()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--number", type=int, default=2000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=15, help="rounds; the best is kept")
    parser.add_argument("--backend", default="eager", help="torch.compile backend")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared machine, threads waiting for each "
        "other inside every matmul make the figures noise)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # The guard itself: telemetry has its own benchmark (bench_telemetry.py).
    gradguard.configure(enabled=False)
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(8, 16)
    bare_compiled = torch.compile(model, backend=args.backend)
    eager_guard = gradguard.guard(model)
    guard_compile = gradguard.guard(torch.compile(model, backend=args.backend))
    compile_guard = torch.compile(gradguard.guard(model), backend=args.backend)

    # The bare compiled model is called while the guarded calls' outputs are remembered:
    # torch then warns (once) that a compiled module runs with global hooks.
    warnings.filterwarnings("ignore", message="Using `torch.compile\\(module\\)` when there")

    def bare() -> object:
        model.eval()
        try:
            with torch.inference_mode():
                return bare_compiled(x)
        finally:
            model.train()

    fns = {
        "bare": bare,
        "eager guard": lambda: eager_guard(x),
        "guard(compile)": lambda: guard_compile(x),
        "compile(guard)": lambda: compile_guard(x),
    }
    for fn in fns.values():  # warm-up: compile, then settle
        for _ in range(20):
            fn()
    expected = fns["bare"]()
    for name, fn in fns.items():
        torch.testing.assert_close(fn(), expected, msg=f"{name} differs")
    frames_before = counters["frames"]["total"]
    times = compare_us(fns, args.number, args.repeat)
    compiled_meanwhile = counters["frames"]["total"] - frames_before

    bare_t = times["bare"]
    print(
        f"torch {torch.__version__}, gradguard {gradguard.__version__}, "
        f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, backend {args.backend!r}"
    )
    print("MLP 16-32-4 with dropout, in training mode; batch of 8")
    print(
        f"µs per call after warm-up (best of {args.repeat} interleaved rounds of "
        f"{args.number} calls; ratio against the bare compiled model)"
    )
    rows = [
        ("bare torch.compile(model), eval + inference_mode", "bare"),
        ("gradguard.guard(model), eager", "eager guard"),
        ("gradguard.guard(torch.compile(model))", "guard(compile)"),
        ("torch.compile(gradguard.guard(model))", "compile(guard)"),
    ]
    for label, key in rows:
        print(f"  {label:50s} {times[key]:8.2f}   {times[key] / bare_t:.2f}x")
    ratio = times["compile(guard)"] / times["guard(compile)"]
    print(f"compile(guard(m)) / guard(compile(m)): {ratio:.2f}x (goal: at most 1.10x)")
    print(f"frames dynamo compiled during the timed rounds: {compiled_meanwhile}")


if __name__ == "__main__":
    main()
