"""``gradguard demo``: the no_grad / inference_mode experiment, run on the user's hardware.

The same forward pass, four ways: with gradients, under ``torch.no_grad()``, under
``torch.inference_mode()``, and through ``gradguard.guard()``. For each it prints whether
the output requires grad and has a ``grad_fn``, the memory the call kept and its peak
(exact tensor accounting), and the time per call, with the savings in percent. The
guarded calls log their events to a file, which the demo then audits.

torch is imported when the demo runs, not when the command line is parsed, so that
``gradguard audit`` never pays for it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["add_arguments", "main", "parser", "run"]

# The seed article's sizes, and the CPU default: a tenth of each, so that the demo
# finishes in well under a minute on two cores.
ARTICLE = {"in_features": 5000, "hidden": 50000, "out_features": 5000, "batch": 1000}
CPU_DEFAULT = {"in_features": 500, "hidden": 5000, "out_features": 500, "batch": 100}


class UsageError(Exception):
    """A bad demo option, reported like argparse's own errors (exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its sub-command parser (no torch import)."""
    size = parser.add_argument_group("model and input (default: the article's SimpleModel)")
    size.add_argument("--in-features", type=int, help="input width (article: 5000)")
    size.add_argument("--hidden", type=int, help="hidden width (article: 50000)")
    size.add_argument("--out-features", type=int, help="output width (article: 5000)")
    size.add_argument("--batch", type=int, help="batch size (article: 1000)")
    size.add_argument(
        "--full",
        action="store_true",
        help="the article's sizes even on the CPU (about 2 GB of weights, slow)",
    )
    size.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="run on your own model: a function returning an nn.Module, e.g. mypkg.models:build",
    )
    size.add_argument(
        "--input-shape",
        metavar="N,D,...",
        help="shape of the input tensor for --model, e.g. 8,3,224,224",
    )
    size.add_argument(
        "--input-dtype",
        default="float32",
        help="dtype of the input for --model (float32; int64 for token ids)",
    )
    run = parser.add_argument_group("run")
    run.add_argument("--device", help="cpu, cuda, cuda:1, mps (default: cuda when available)")
    run.add_argument("--repeat", type=int, default=20, help="timed calls per variant (20)")
    run.add_argument(
        "--log-file",
        help="where the guarded calls' events go (default: a new temporary directory)",
    )


@dataclass
class Row:
    """One variant's figures."""

    label: str
    requires_grad: bool
    grad_fn: str
    kept: int
    peak: int
    ms: float


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        msg = f"--{name.replace('_', '-')} must be a positive number; got {value}"
        raise UsageError(msg)


def _build(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, torch.Tensor, str]:
    import torch
    from torch import nn

    if args.model:
        module_name, _, factory_name = args.model.partition(":")
        if not module_name or not factory_name:
            msg = f"--model must look like module:factory; got {args.model!r}"
            raise UsageError(msg)
        if not args.input_shape:
            msg = "--model needs --input-shape, e.g. --input-shape 8,3,224,224"
            raise UsageError(msg)
        try:
            factory = getattr(importlib.import_module(module_name), factory_name)
        except (ImportError, AttributeError) as error:
            msg = (
                f"--model {args.model!r}: cannot load it ({error}); run from where the module "
                "imports (or set PYTHONPATH) and name a function defined in it"
            )
            raise UsageError(msg) from None
        model = factory()
        if not isinstance(model, nn.Module):
            msg = (
                f"--model {args.model!r} returned a {type(model).__name__}, not an nn.Module; "
                "name a function that builds and returns the model"
            )
            raise UsageError(msg)
        try:
            shape = tuple(int(d) for d in args.input_shape.split(","))
            dtype = getattr(torch, args.input_dtype)
        except (ValueError, AttributeError):
            msg = (
                f"--input-shape must be numbers separated by commas and --input-dtype a torch "
                f"dtype; got {args.input_shape!r}, {args.input_dtype!r}"
            )
            raise UsageError(msg) from None
        x = torch.ones(shape, dtype=dtype, device=device)
        if x.is_floating_point():
            x.requires_grad_(True)
        return model.to(device), x, f"{args.model}, input {args.input_shape} ({args.input_dtype})"

    sizes = dict(ARTICLE if (device.type != "cpu" or args.full) else CPU_DEFAULT)
    for key in sizes:
        value = getattr(args, key)
        _positive(key, value)
        if value is not None:
            sizes[key] = value

    class SimpleModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Sequential(
                nn.Linear(sizes["in_features"], sizes["hidden"]),
                nn.ReLU(),
                nn.Linear(sizes["hidden"], sizes["out_features"]),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x)  # type: ignore[no-any-return]

    model = SimpleModel().to(device)
    x = torch.ones(sizes["batch"], sizes["in_features"], device=device)
    x.requires_grad = True
    description = (
        f"SimpleModel: Linear({sizes['in_features']}, {sizes['hidden']}) -> ReLU -> "
        f"Linear({sizes['hidden']}, {sizes['out_features']}), input "
        f"ones({sizes['batch']}, {sizes['in_features']}) with requires_grad=True"
    )
    return model, x, description


def _measure(label: str, call: Callable[[], Any], repeat: int, sync: Callable[[], None]) -> Row:
    from ._memory import TensorProbe

    probe = TensorProbe()
    state = probe.start()
    try:
        out = call()
        sync()
    finally:
        _, kept, peak = probe.stop(state)
    requires_grad, grad_fn = bool(out.requires_grad), type(out.grad_fn).__name__
    if out.grad_fn is None:
        grad_fn = "None"
    del out
    times = []
    for i in range(repeat + 2):
        start = time.perf_counter()
        call()
        sync()
        if i >= 2:  # two warm-up calls
            times.append((time.perf_counter() - start) * 1e3)
    return Row(label, requires_grad, grad_fn, kept or 0, peak or 0, statistics.median(times))


def _mb(n: int) -> str:
    return f"{n / 1024**2:,.2f} MB"


def _change(new: float, base: float) -> str:
    """``new`` against ``base`` in percent: -90.0% is a tenth of it."""
    return f"{(new / base - 1) * 100:+.1f}%" if base else "n/a"


def parser(prog: str = "gradguard demo") -> argparse.ArgumentParser:
    """The demo's command-line parser."""
    demo = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Run the same forward pass with gradients, under torch.no_grad(), under "
            "torch.inference_mode() and through gradguard.guard(), and compare what each "
            "keeps in memory and how long it takes; then audit the guarded calls' log."
        ),
    )
    add_arguments(demo)
    return demo


def main(argv: list[str] | None = None) -> int:
    """Run the demo with command-line arguments ``argv``; return the exit status."""
    demo = parser()
    try:
        return run(demo.parse_args(argv))
    except UsageError as error:
        demo.error(str(error))  # exits with status 2


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed arguments; return the exit status."""
    import torch

    import gradguard

    from ._cli import main as cli_main

    _positive("repeat", args.repeat)
    if args.device:
        try:
            device = torch.device(args.device)
        except RuntimeError as error:
            msg = f"--device: {error}; use cpu, cuda, cuda:N or mps"
            raise UsageError(msg) from None
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        msg = "--device cuda: this machine has no CUDA device; use --device cpu"
        raise UsageError(msg)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        msg = f"--device {device}: this machine has {count} CUDA device(s); use cuda:0"
        msg += "" if count == 1 else f" to cuda:{count - 1}"
        raise UsageError(msg)
    model, x, description = _build(args, device)
    model.train()  # as a freshly built model is: the guarded variant has to switch it

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    log_file = args.log_file or os.path.join(
        tempfile.mkdtemp(prefix="gradguard-demo-"), "demo.jsonl"
    )
    if os.path.exists(log_file):
        os.remove(log_file)
    settings = gradguard.configure(log_file=log_file)
    sized = any(getattr(args, key) is not None for key in CPU_DEFAULT)
    scaled = device.type == "cpu" and not (args.full or args.model or sized)
    print(
        f"gradguard demo on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    print(f"  {description}")
    if scaled:
        print(
            "  CPU-only run: sizes are a tenth of the article's, so that it finishes in under "
            "a minute; --full runs the article's sizes."
        )
    print()

    guarded_memory = gradguard.guard(model, name="demo.guard.memory", memory="tensors")
    guarded = gradguard.guard(model, name="demo.guard")

    def with_grad() -> torch.Tensor:
        return model(x)  # type: ignore[no-any-return]

    def no_grad() -> torch.Tensor:
        with torch.no_grad():
            return model(x)  # type: ignore[no-any-return]

    def inference() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)  # type: ignore[no-any-return]

    rows = []
    try:
        model.eval()  # the article's comparison: eval for the three torch variants
        rows.append(_measure("with gradients", with_grad, args.repeat, sync))
        rows.append(_measure("torch.no_grad()", no_grad, args.repeat, sync))
        rows.append(_measure("torch.inference_mode()", inference, args.repeat, sync))
        model.train()
        out = guarded_memory(x)  # exact accounting, logged with mem_kind="tensors"
        del out
        rows.append(_measure("gradguard.guard(model)", lambda: guarded(x), args.repeat, sync))
        gradguard.flush()
    finally:
        gradguard.configure(log_file=None)
    print(
        f"{'':24} {'requires_grad':>13} {'grad_fn':>16} {'memory kept':>13} "
        f"{'peak':>13} {'time/call':>11}"
    )
    for row in rows:
        print(
            f"{row.label:24} {row.requires_grad!s:>13} {row.grad_fn:>16} {_mb(row.kept):>13} "
            f"{_mb(row.peak):>13} {row.ms:>8.2f} ms"
        )
    base = rows[0]
    print()
    print("Change against the call with gradients (negative: less):")
    for row in rows[1:]:
        print(
            f"  {row.label:24} memory kept {_change(row.kept, base.kept):>7}, "
            f"peak {_change(row.peak, base.peak):>7}, time {_change(row.ms, base.ms):>7}"
        )
    no_grad_row, inference_row = rows[1], rows[2]
    print(
        f"  inference_mode against no_grad: time {_change(inference_row.ms, no_grad_row.ms)}"
        f" (memory kept {_mb(inference_row.kept)} and {_mb(no_grad_row.kept)})"
    )
    print(f"\nThe guarded calls' events are in {settings.log_file}; the audit of that file:\n")
    return cli_main(["audit", log_file])
