"""Cost of the leak sentinel, beside the same code with it off, in the same run.

Run: python examples/benchmarks/bench_leaks.py

Prints three figures: a module call in a training step while ``leaks="boundary"`` is
watching (a gradguard-made inference tensor is alive) and nothing leaks; a torch
operation under ``watch_leaks(level="strict")``; and guarded calls whose outputs die at
once (plain labels, or a tensor dropped after use), the program that keeps no inference
tensors, with the sentinel on and off.
"""

from __future__ import annotations

import timeit
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

    # Interleaved rounds, as compare_us does, switching what is installed between them.
    timer = timeit.Timer(module_call)
    calls = {"idle": float("inf"), "floor": float("inf"), "watching": float("inf")}
    number = n // 4 or 1
    for _ in range(r):
        calls["idle"] = min(calls["idle"], timer.timeit(number) / number * 1e6)
        trivial = nn.modules.module.register_module_forward_pre_hook(lambda module, args: None)
        calls["floor"] = min(calls["floor"], timer.timeit(number) / number * 1e6)
        trivial.remove()
        alive = teacher(torch.randn(4, 8))  # the module hook watches every module call
        calls["watching"] = min(calls["watching"], timer.timeit(number) / number * 1e6)
        del alive
    idle, floor, watching = calls.values()
    alive = teacher(torch.randn(4, 8))  # for the strict figures below

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
    labels = gradguard.infer(name="bench.labels")(lambda: model(inputs).argmax(-1).tolist())
    logits = gradguard.infer(name="bench.logits")(lambda: model(inputs))

    def use_logits() -> None:
        logits().argmax(-1)  # the output dies at the end of the statement

    programs = {"labels": timeit.Timer(labels), "logits": timeit.Timer(use_logits)}
    young: dict[tuple[str, str], float] = {}
    for _ in range(r):  # interleaved: the level changes between timed runs, not inside
        for leaks in ("off", "boundary"):
            gradguard.configure(enabled=False, leaks=leaks)
            for name, timer in programs.items():
                t = timer.timeit(number) / number * 1e6
                young[leaks, name] = min(young.get((leaks, name), float("inf")), t)

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
    print("a program that keeps no inference tensor: a guarded MLP call, µs per call")
    for name, label in (
        ("labels", "returning .tolist() labels"),
        ("logits", "its output dropped at once"),
    ):
        off, on = young["off", name], young["boundary", name]
        print(f"  {label:<28s} leaks='off' {off:7.3f}   'boundary' {on:7.3f}   {on / off:.2f}x")


if __name__ == "__main__":
    main()
