"""Cost of the leak sentinel, beside the same code with it off, in the same run.

Run: python examples/benchmarks/bench_leaks.py

Prints three figures: a module call in a training step while ``leaks="boundary"`` is
watching (a gradguard-made inference tensor is alive) and nothing leaks; a torch
operation under ``watch_leaks(level="strict")``; and a loop of guarded calls whose
outputs die before the next call, the program that keeps no inference tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from _timing import arguments, compare_us  # beside this script
from torch import nn
from torch.overrides import TorchFunctionMode

import gradguard


class _Trivial(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


def main() -> None:
    n, r = arguments(__doc__)
    torch.set_num_threads(1)
    gradguard.configure(enabled=False)  # the sentinel alone: telemetry has its own script

    layer = nn.Linear(8, 8).train()
    x = torch.randn(4, 8, requires_grad=True)
    teacher = gradguard.guard(nn.Linear(8, 8), name="bench.teacher")

    def module_call() -> None:
        layer(x)

    idle = compare_us({"call": module_call}, n // 4 or 1, r)["call"]
    trivial = nn.modules.module.register_module_forward_pre_hook(lambda module, args: None)
    floor = compare_us({"call": module_call}, n // 4 or 1, r)["call"]
    trivial.remove()
    alive = teacher(torch.randn(4, 8))  # now the module hook watches every module call
    watching = compare_us({"call": module_call}, n // 4 or 1, r)["call"]

    a, b = torch.randn(64), torch.randn(64, requires_grad=True)

    def op() -> None:
        torch.mul(a, b)

    def strict_op() -> None:
        with gradguard.watch_leaks(level="strict"):
            for _ in range(100):
                torch.mul(a, b)

    def plain_ops() -> None:
        for _ in range(100):
            torch.mul(a, b)

    def trivial_ops() -> None:
        with _Trivial():
            for _ in range(100):
                torch.mul(a, b)

    ops = compare_us(
        {"plain": plain_ops, "trivial": trivial_ops, "strict": strict_op}, max(n // 400, 10), r
    )
    del alive

    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    inputs = torch.randn(8, 16)
    predict = gradguard.infer(name="bench.predict")(lambda: model(inputs).argmax(-1).tolist())
    gradguard.configure(enabled=False, leaks="off")
    off = compare_us({"off": predict}, n // 4 or 1, r)["off"]
    gradguard.configure(enabled=False, leaks="boundary")
    on = compare_us({"on": predict}, n // 4 or 1, r)["on"]
    gradguard.configure(enabled=False, leaks="off")
    both = compare_us({"off": predict}, n // 4 or 1, r)["off"]
    gradguard.configure(enabled=False, leaks="boundary")
    both_on = compare_us({"on": predict}, n // 4 or 1, r)["on"]
    off, on = min(off, both), min(on, both_on)

    print(f"torch {torch.__version__}, 1 thread, logging off")
    print("a Linear(8, 8) call in a training step, µs per module call")
    print(f"  nothing to watch (hook not installed)   {idle:7.3f}   1.00x")
    print(
        f"  a gradguard-made tensor alive           {watching:7.3f}   "
        f"+{watching - idle:.2f} µs per module call"
    )
    print(
        f"  for reference, a global hook doing nothing {floor:4.3f}   "
        f"+{floor - idle:.2f} µs (torch's own cost of any hook)"
    )
    print("torch.mul on 64 floats, µs per op")
    print(f"  plain                                   {ops['plain'] / 100:7.3f}   1.00x")
    print(
        f"  inside watch_leaks(level='strict')      {ops['strict'] / 100:7.3f}   "
        f"+{(ops['strict'] - ops['plain']) / 100:.2f} µs per op"
    )
    print(
        f"  for reference, a TorchFunctionMode doing nothing {ops['trivial'] / 100:.3f}   "
        f"+{(ops['trivial'] - ops['plain']) / 100:.2f} µs"
    )
    print("a guarded predict() whose output dies at once (an MLP, argmax, tolist), µs per call")
    print(f"  leaks='off'                             {off:7.3f}   1.00x")
    print(f"  leaks='boundary' (the default)          {on:7.3f}   {on / off:.2f}x")


if __name__ == "__main__":
    main()
