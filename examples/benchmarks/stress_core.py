"""Stress gradguard's core: forks while threads are inside guarded calls, and a storm of
interrupts landing at random points of small guarded calls. Prints the counts.

Run: python examples/benchmarks/stress_core.py fork --forks 100
     python examples/benchmarks/stress_core.py signals --interrupts 10000 [--verbose]

``--defaults`` runs either with gradguard's default settings (in-process aggregates, the
leak sentinel) instead of the core alone.

fork: threads run guarded calls (plain, generator, block; a model with its own train()
among them) on models in training mode without pause; the main thread forks. Each
child checks that every model has the flag it would have once the parent's threads'
calls ended (training, as the user left it), that gradguard's registry is empty, and
that a guarded call still works; it exits 0, or 1 when something is wrong. A child that
does not exit within the timeout counts as a hang.

signals: a timer (SIGALRM) raises KeyboardInterrupt after a random 5-150 µs while the
main thread runs small guarded calls in a loop; after each interrupt the flags, torch's
modes and gradguard's registry must be exactly as before the loop (0 stale states).
An interrupt that lands in a collector callback or a finalizer is dropped by Python
("Exception ignored") and the calls go on; the state is checked after those too.
``--verbose`` says what each stale state held.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

import gradguard
from gradguard import _eval, _hooks, _net, _scope, _steps


class KeepsNormFrozen(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.norm = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)

    def train(self, mode: bool = True) -> KeepsNormFrozen:
        super().train(mode)
        self.norm.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.norm(self.linear(x)))


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def leftovers() -> list[str]:
    """What gradguard's registries still hold: empty when nothing is stale."""
    found = {
        "held": _eval.registry.held,
        "in use": _eval.registry.in_use,
        "deferred": _eval.registry.deferred,
        "net calls": _net.calls.by_thread,
        "net hook": "eval" in _hooks.forward_pre_hooks.watchers,
        "open blocks": _scope.open_blocks.blocks,
        "dying bodies": _steps.bodies.dying,
    }
    return [f"{what}: {value!r}" for what, value in found.items() if value]


def registry_empty() -> bool:
    return not leftovers()


def calls(models: list[nn.Module]) -> list[Callable[[], Any]]:
    """Small guarded calls of every kind on ``models``."""
    x = torch.ones(2, 4)
    first, second = models

    @gradguard.infer
    def plain(m: nn.Module) -> torch.Tensor:
        return m(x)

    @gradguard.infer(net="always")
    def through_global() -> torch.Tensor:
        return models[0](x) + models[1](x)

    @gradguard.infer
    def stream(m: nn.Module) -> Iterator[torch.Tensor]:
        yield m(x)
        yield m(x)

    def block() -> None:
        with gradguard.scope(second, name="stress-block"):
            second(x)

    return [
        lambda: plain(first),
        lambda: plain(second),
        through_global,
        lambda: list(stream(first)),
        block,
    ]


def stress_fork(forks: int, threads: int, timeout: float) -> tuple[int, int, int]:
    models = [nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train(), KeepsNormFrozen().train()]
    before = [flags(m) for m in models]
    kinds = calls(models)
    stop = threading.Event()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            rng.choice(kinds)()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for thread in pool:
        thread.start()
    wrong = hangs = 0
    try:
        for _ in range(forks):
            time.sleep(random.uniform(0, 0.003))
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    ok = [flags(m) for m in models] == before and registry_empty()
                    peek = gradguard.infer(lambda: [flags(m) for m in models])
                    inside = peek()
                    ok = ok and not any(any(f) for f in inside)
                    ok = ok and [flags(m) for m in models] == before and registry_empty()
                    code = 0 if ok else 1
                finally:
                    os._exit(code)
            deadline = time.monotonic() + timeout
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    wrong += os.waitstatus_to_exitcode(status) != 0
                    break
                if time.monotonic() > deadline:
                    hangs += 1
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.002)
    finally:
        stop.set()
        for thread in pool:
            thread.join()
    return forks, wrong, hangs


def stress_signals(interrupts: int, *, verbose: bool = False) -> tuple[int, int]:
    models = [nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train(), KeepsNormFrozen().train()]
    before = [flags(m) for m in models]
    kinds = calls(models)

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    sys.unraisablehook = lambda unraisable: None  # those dropped interrupts, unprinted
    stale = 0
    landed = 0
    names = ["plain(first)", "plain(second)", "through_global", "stream(first)", "block"]
    try:
        while landed < interrupts:
            index = random.randrange(len(kinds))
            call = kinds[index]
            try:
                signal.setitimer(signal.ITIMER_REAL, random.uniform(5e-6, 150e-6))
                # Bounded: an interrupt landing in a weakref callback or finalizer is
                # reported and dropped by Python ("Exception ignored"), never raised here.
                for _ in range(100):
                    call()
            except KeyboardInterrupt:
                landed += 1
            signal.setitimer(signal.ITIMER_REAL, 0)
            ok = (
                [flags(m) for m in models] == before
                and registry_empty()
                and torch.is_grad_enabled()
                and not torch.is_inference_mode_enabled()
            )
            if not ok:
                stale += 1
                if verbose:
                    wrong = [
                        *leftovers(),
                        *(["flags"] if [flags(m) for m in models] != before else []),
                        *(["grad off"] if not torch.is_grad_enabled() else []),
                        *(["inference mode on"] if torch.is_inference_mode_enabled() else []),
                    ]
                    print(f"stale after {names[index]}: {'; '.join(wrong)}", file=sys.stderr)
                _steps.bodies.reset()  # first: it leaves the modes a collection entered
                _eval.reset()
                _scope.open_blocks.reset()
                for model, flag in zip(models, before, strict=True):
                    for module, f in zip(model.modules(), flag, strict=True):
                        module.training = f
                _net.calls.reset()
                torch.set_grad_enabled(True)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return landed, stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("fork", "signals"))
    parser.add_argument("--forks", type=int, default=100)
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds before a hang")
    parser.add_argument("--interrupts", type=int, default=10_000)
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="run with gradguard's default settings (aggregates, leak sentinel) instead of "
        "the core alone",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="signals: say what each stale state held"
    )
    args = parser.parse_args()
    if not args.defaults:
        gradguard.configure(enabled=False, leaks="off")  # the core alone
    torch.set_num_threads(1)
    warnings_off()
    if args.what == "fork":
        forks, wrong, hangs = stress_fork(args.forks, args.threads, args.timeout)
        print(f"fork: {forks} forks, {wrong} wrong children, {hangs} hangs")
        sys.exit(1 if wrong or hangs else 0)
    landed, stale = stress_signals(args.interrupts, verbose=args.verbose)
    print(f"signals: {landed} interrupts, {stale} stale states")
    sys.exit(1 if stale else 0)


def warnings_off() -> None:
    import warnings

    warnings.simplefilter("ignore", gradguard.EvalWarning)


if __name__ == "__main__":
    main()
