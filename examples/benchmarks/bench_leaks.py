"""Cost of the leak sentinel, beside the same code with it off, in the same run.

Run: python examples/benchmarks/bench_leaks.py

Prints: a module call in a training step while remembered tensors are alive (a
gradguard-made inference tensor, a thousand of them, a parameter a guarded call left in
a model) and nothing leaks, beside the same call with no hook, with hooks that do
nothing, and with a pre-hook that checks every call's arguments; a torch operation under
``watch_leaks(level="strict")`` while a remembered tensor is alive; and guarded calls
whose outputs die at once (plain labels, or a tensor dropped after use), the program
that keeps no inference tensors, with the sentinel on and off. Times are CPU time of
this process, so that other processes on a shared machine do not count.
"""

from __future__ import annotations

import time
import timeit
import warnings
from typing import Any

import torch
from _timing import arguments  # beside this script
from torch import nn
from torch.overrides import TorchFunctionMode

import gradguard


class _Trivial(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        return func(*args, **(kwargs or {}))


def _previous_boundary(module: nn.Module, args: Any) -> None:
    """A boundary that checks every module call's arguments for an inference tensor
    entering a call autograd records, before the call: the reference for the sentinel,
    which instead waits for torch's error and names the call in it."""
    if torch.compiler.is_compiling():
        return
    if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
        return
    suspect, recorded = None, False
    for value in args:
        if isinstance(value, torch.Tensor):
            recorded = recorded or value.requires_grad
            if suspect is None and value.is_inference():
                suspect = value
    if not recorded:
        recorded = any(p.requires_grad for p in module._parameters.values() if p is not None)
    if suspect is None or not recorded:
        return


def main() -> None:
    n, r = arguments(__doc__)
    torch.set_num_threads(1)
    gradguard.configure(enabled=False)  # the sentinel alone: telemetry has its own script

    layer = nn.Linear(8, 8).train()
    x = torch.randn(4, 8, requires_grad=True)
    teacher = gradguard.guard(nn.Linear(8, 8), name="bench.teacher")

    @gradguard.infer(name="bench.build")
    def build() -> nn.Module:
        return nn.Linear(2, 2)  # its parameters: inference tensors a call left in a model

    def module_call() -> None:
        layer(x)

    register = nn.modules.module
    # Interleaved rounds, as compare_us does, switching what is installed between them.
    # CPU time of this process: time other processes take on a shared machine does not
    # count (a round of 1,000 calls lasts milliseconds, far above the clock's resolution).
    timer = timeit.Timer(module_call, timer=time.process_time)
    rows = ("idle", "floor", "floor_always", "previous", "watching", "thousand", "resident")
    calls = dict.fromkeys(rows, float("inf"))
    # Many short rounds: on a shared machine the best of each row is more likely to fall
    # in a quiet moment than with a few long ones.
    number = n // 20 or 1

    def best(row: str) -> None:
        calls[row] = min(calls[row], timer.timeit(number) / number * 1e6)

    for _ in range(r * 4):
        best("idle")
        trivial = register.register_module_forward_pre_hook(lambda module, args: None)
        best("floor")
        trivial.remove()
        trivial = register.register_module_forward_hook(
            lambda module, args, result: None, always_call=True
        )
        best("floor_always")
        trivial.remove()
        previous = register.register_module_forward_pre_hook(_previous_boundary)
        best("previous")
        previous.remove()
        alive = teacher(torch.randn(4, 8))  # remembered: the sentinel's hook is in
        best("watching")
        many = [teacher(torch.randn(4, 8)) for _ in range(1000)]
        best("thousand")
        del alive, many
        nn.Identity()(torch.ones(1))  # nothing remembered now: the hook goes
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gradguard.LeakWarning)
            built = build()  # a call's leftover: the pre-hook for modules about to train
        best("resident")
        del built
    idle = calls["idle"]
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

    op_timers = {
        name: timeit.Timer(fn, timer=time.process_time)
        for name, fn in (("plain", plain_ops), ("trivial", trivial_ops), ("strict", strict_op))
    }
    ops = dict.fromkeys(op_timers, float("inf"))
    op_number = max(n // 400, 10)
    for _ in range(r * 4):  # interleaved, as compare_us does
        for name, op_timer in op_timers.items():
            ops[name] = min(ops[name], op_timer.timeit(op_number) / op_number * 1e6)
    del alive

    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    inputs = torch.randn(8, 16)
    labels = gradguard.infer(name="bench.labels")(lambda: model(inputs).argmax(-1).tolist())
    logits = gradguard.infer(name="bench.logits")(lambda: model(inputs))

    def use_logits() -> None:
        logits().argmax(-1)  # the output dies at the end of the statement

    programs = {
        "labels": timeit.Timer(labels, timer=time.process_time),
        "logits": timeit.Timer(use_logits, timer=time.process_time),
    }
    young: dict[tuple[str, str], float] = {}
    for _ in range(r * 4):  # interleaved: the level changes between timed runs, not inside
        for leaks in ("off", "boundary"):
            gradguard.configure(enabled=False, leaks=leaks)
            for name, timer in programs.items():
                t = timer.timeit(number) / number * 1e6
                young[leaks, name] = min(young.get((leaks, name), float("inf")), t)

    print(f"torch {torch.__version__}, 1 thread, logging off, CPU time of this process")
    print("a Linear(8, 8) call in a training step, µs per module call")
    print(f"  nothing to watch (hook not installed)     {idle:7.3f}   1.00x")
    for row, label in (
        ("watching", "a gradguard-made tensor alive"),
        ("thousand", "1,000 gradguard-made tensors alive"),
        ("resident", "only a parameter a call left in a model"),
        ("previous", "for reference, a pre-hook checking arguments"),
        ("floor", "for reference, a global hook doing nothing"),
        ("floor_always", "  and one with always_call=True"),
    ):
        print(f"  {label:<42s}{calls[row]:7.3f}   {calls[row] - idle:+.2f} µs per module call")
    print(
        f"  the sentinel against that argument check: "
        f"{calls['watching'] - calls['previous']:+.2f} µs per module call"
    )
    print("torch.mul on 64 floats, µs per op")
    print(f"  plain                                   {ops['plain'] / 100:7.3f}   1.00x")
    print(
        f"  inside watch_leaks(level='strict')      {ops['strict'] / 100:7.3f}   "
        f"+{(ops['strict'] - ops['plain']) / 100:.2f} µs per op (a remembered tensor alive)"
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
