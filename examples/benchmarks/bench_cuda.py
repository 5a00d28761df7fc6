"""Cost of gradguard on a GPU model, beside the bare torch decorator in the same run.

Run: python examples/benchmarks/bench_cuda.py            (on a machine with CUDA)
     python examples/benchmarks/bench_cuda.py --device cpu --number 50 --repeat 1

Each round synchronizes the device, makes ``--number`` calls and synchronizes again, so a
figure is what a caller waits for, kernels included. Two models: a small MLP whose calls
are bound by kernel launches (where host-side cost shows most) and a large one bound by
the device's arithmetic. Rows: ``@torch.inference_mode()``; gradguard with logging off;
a full event (device time from CUDA events read at a later call, the caching
allocator's bytes), and the same without the allocator's figures; and ``sync=True``,
which waits for the device at every call.
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import time
from collections.abc import Callable

import torch
from torch import nn

import gradguard


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--number", type=int, default=2000, help="calls per round")
    parser.add_argument("--repeat", type=int, default=7, help="rounds; the best is kept")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device; use --device cpu")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    sizes = {
        "small MLP (32x256 -> 512 -> 256)": (256, 512, 32, args.number),
        "large MLP (512x4096 -> 4 x 4096)": (4096, 4096, 512, max(args.number // 10, 1)),
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {device} ({name})")
    with tempfile.TemporaryDirectory() as tmp:
        gradguard.configure(log_file=os.path.join(tmp, "calls.jsonl"), leaks="off")
        for label, (width, hidden, batch, number) in sizes.items():
            layers: list[nn.Module] = [nn.Linear(width, hidden), nn.ReLU()]
            if width == hidden:
                layers += [nn.Linear(hidden, hidden), nn.ReLU()] * 2
            layers.append(nn.Linear(hidden, width))
            model = nn.Sequential(*layers).to(device).eval()
            x = torch.randn(batch, width, device=device)
            times = _compare(_calls(model, x), number, args.repeat, sync)
            gradguard.flush()
            bare = times["@torch.inference_mode()"]
            print(f"{label}, µs per call, {number} calls per round, best of {args.repeat}")
            for row, value in times.items():
                print(f"  {row:<26}{value:9.1f}   {value / bare:5.2f}x   {value - bare:+7.1f} µs")
        with open(os.path.join(tmp, "calls.jsonl"), "rb") as written:
            events = sum(1 for _ in written)
    print(f"{events} JSON lines written")


def _calls(model: nn.Module, x: torch.Tensor) -> dict[str, Callable[[], object]]:
    """The ways to call ``model(x)``; gradguard sees the model among the arguments."""

    def forward(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
        return m(t)

    ways = {
        "@torch.inference_mode()": torch.inference_mode()(forward),
        "gradguard, logging off": gradguard.infer(log=False, name="off")(forward),
        "gradguard, full event": gradguard.infer(name="full")(forward),
        "  the same, memory=False": gradguard.infer(memory=False, name="nomem")(forward),
        "gradguard, sync=True": gradguard.infer(sync=True, name="sync")(forward),
    }
    return {label: functools.partial(fn, model, x) for label, fn in ways.items()}


def _compare(
    calls: dict[str, Callable[[], object]], number: int, repeat: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Best µs per call of each function, rounds interleaved, device work included."""
    best = dict.fromkeys(calls, float("inf"))
    for fn in calls.values():  # warm-up: kernels chosen, allocator blocks cached
        for _ in range(2):
            fn()
    for _ in range(repeat):
        for label, fn in calls.items():
            sync()
            start = time.perf_counter()
            for _ in range(number):
                fn()
            sync()
            best[label] = min(best[label], (time.perf_counter() - start) / number * 1e6)
    return best


if __name__ == "__main__":
    main()
