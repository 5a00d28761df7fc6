"""Cost of ``gradguard.scan()``, beside the same code unscanned, in the same run.

Run: python examples/benchmarks/bench_scan.py

Prints, for small CPU layers where the overhead shows most, each figure beside the bare
torch one, measured in interleaved rounds:

- evaluation code (``torch.no_grad()``, model in eval): a call of a Sequential of 16
  Linear layers, i.e. one outermost and 16 nested module calls; the cost per module call;
- one outermost module call on its own (a single Linear under no_grad);
- a training step (forward and backward) of the same Sequential, whose graph saves 32
  tensors: the cost per saved tensor, once the module calls' share is taken out.

Nothing is installed while no scan is open: the bare figures are torch's own path. Times
are the thread's CPU time (``time.thread_time``, torch on one thread), which other
processes of a shared machine do not inflate.
"""

from __future__ import annotations

import time
import timeit
from typing import Any

import torch
from _timing import arguments  # beside this script
from torch import nn

import gradguard

LAYERS = 16


def interleaved(fns: dict[str, Any], number: int, repeat: int) -> dict[str, float]:
    """Best µs per call of each function, bare and scanned, alternating every round."""
    best: dict[str, float] = {}
    for _ in range(repeat):
        for name, fn in fns.items():
            timer = timeit.Timer(fn, timer=time.thread_time)
            bare = timer.timeit(number) / number * 1e6
            with gradguard.scan():
                scanned = timer.timeit(number) / number * 1e6
            best[f"{name} bare"] = min(best.get(f"{name} bare", float("inf")), bare)
            best[f"{name} scan"] = min(best.get(f"{name} scan", float("inf")), scanned)
    return best


def saved_tensors(step: Any) -> int:
    count = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal count
        count += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return count


def main() -> None:
    n, r = arguments(__doc__)
    torch.set_num_threads(1)
    model = nn.Sequential(*(nn.Linear(8, 8) for _ in range(LAYERS)))
    single = nn.Linear(8, 8).eval()
    x = torch.randn(4, 8)

    def evaluate() -> None:
        with torch.no_grad():
            model(x)

    def outermost() -> None:
        with torch.no_grad():
            single(x)

    def train_step() -> None:
        model(x).sum().backward()

    model.eval()
    saved = saved_tensors(train_step)
    times = interleaved(
        {"eval": evaluate, "single": outermost, "train": train_step}, max(n // 20, 10), r
    )
    calls = LAYERS + 1
    per_call = (times["eval scan"] - times["eval bare"]) / calls
    single_cost = times["single scan"] - times["single bare"]
    train_extra = times["train scan"] - times["train bare"]
    # The step's module calls: one outermost (with its graph set up) and 16 nested.
    per_saved = (train_extra - single_cost - (calls - 1) * per_call) / saved

    def row(label: str, name: str) -> None:
        bare, scan = times[f"{name} bare"], times[f"{name} scan"]
        print(f"  {label:<46} {bare:9.2f} µs bare  {scan:9.2f} µs scanned  x{scan / bare:.2f}")

    print(f"torch {torch.__version__}, 1 thread; best of {r} interleaved rounds")
    row(f"eval call, {calls} module calls (no_grad)", "eval")
    row("one outermost module call (no_grad)", "single")
    row(f"training step, {saved} saved tensors", "train")
    print(f"  per module call in evaluation code:            +{per_call:.2f} µs (goal: <= 2 µs)")
    print(f"  per outermost module call:                     +{single_cost:.2f} µs")
    print(f"  per saved tensor in a recorded graph:          +{per_saved:.2f} µs")


if __name__ == "__main__":
    main()
