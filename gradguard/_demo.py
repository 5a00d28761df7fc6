"""``gradguard demo``: the no_grad / inference_mode experiment, run on the user's hardware.

The same forward pass, four ways: with gradients, under ``torch.no_grad()``, under
``torch.inference_mode()``, and through ``gradguard.guard()``. For each it prints whether
the output requires grad and has a ``grad_fn``, the memory the call kept and its peak
(exact tensor accounting), and the time per call as a median with its range. The
variants are timed in interleaved rounds (one call of each per round, in a rotating
order), so that a busy machine slows them all alike, and a difference is called only
when the rounds agree on it (see :func:`judge`). The guarded calls log their events to
a file, and the demo audits the events of this run.

torch is imported when the demo runs, not when the command line is parsed, so that
``gradguard audit`` never pays for it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "MIN_ROUNDS",
    "Judgement",
    "Spread",
    "add_arguments",
    "judge",
    "main",
    "parser",
    "run",
    "spread",
    "verdict",
]

# The seed article's sizes, and the CPU default: a tenth of each, so that the demo
# finishes in well under a minute on two cores.
ARTICLE = {"in_features": 5000, "hidden": 50000, "out_features": 5000, "batch": 1000}
CPU_DEFAULT = {"in_features": 500, "hidden": 5000, "out_features": 500, "batch": 100}

MIN_ROUNDS = 5
"""Fewer timed rounds than this never support a conclusion about speed."""

_WARMUP_ROUNDS = 2
_DEVICE_TYPES = ("cpu", "cuda", "mps")


class UsageError(Exception):
    """A bad demo option, reported like argparse's own errors (exit status 2)."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"invalid int value: {text!r}; give a positive whole number"
        raise argparse.ArgumentTypeError(msg) from None
    if value <= 0:
        msg = f"must be a positive whole number; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the demo's options to its sub-command parser (no torch import)."""
    size = parser.add_argument_group("model and input (default: the article's SimpleModel)")
    size.add_argument("--in-features", type=_positive_int, help="input width (article: 5000)")
    size.add_argument("--hidden", type=_positive_int, help="hidden width (article: 50000)")
    size.add_argument("--out-features", type=_positive_int, help="output width (article: 5000)")
    size.add_argument("--batch", type=_positive_int, help="batch size (article: 1000)")
    size.add_argument(
        "--full",
        action="store_true",
        help="the article's sizes even on the CPU (about 2 GB of weights, slow)",
    )
    size.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="run on your own model: a function returning an nn.Module, e.g. mymodel:build "
        "(imported from the current directory first)",
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
    run.add_argument(
        "--repeat",
        type=_positive_int,
        default=20,
        help=f"timed rounds, one call of each variant per round (20; at least {MIN_ROUNDS} "
        "to compare speeds)",
    )
    run.add_argument(
        "--log-file",
        help="append the guarded calls' events to this file (never truncated; default: a "
        "temporary file, removed at the end)",
    )
    run.add_argument(
        "--keep", action="store_true", help="keep the temporary log file and print where it is"
    )


# --- figures: pure functions, tested on synthetic timings ----------------------------------


class Spread(NamedTuple):
    """A set of timings in ms: median and range."""

    median: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{_ms(self.median)} ({_ms(self.low)}-{_ms(self.high)}) ms"


def spread(times: Sequence[float]) -> Spread:
    """The median and min-max of ``times``."""
    return Spread(statistics.median(times), min(times), max(times))


class Judgement(NamedTuple):
    """How much slower (positive) or faster one variant is than another, round by round."""

    change: float  # median of the per-round ratios, minus 1: -0.1 is 10% faster
    low: float  # the 10th and 90th percentiles of the per-round changes
    high: float
    rounds: int
    conclusive: bool  # at least MIN_ROUNDS rounds, and low and high on one side of zero


def judge(new: Sequence[float], base: Sequence[float]) -> Judgement:
    """Compare timings of ``new`` with ``base`` taken in the same rounds (pairs by index).

    Each round gives one ratio, ``new[i] / base[i]``: a machine busy during a round slows
    both, and the ratio stays. The change is the median ratio; it is conclusive only when
    at least :data:`MIN_ROUNDS` rounds were timed and 80% of the ratios (from the 10th to
    the 90th percentile) lie on the same side of 1. Otherwise the spread between rounds is
    wider than the difference, and another run may well conclude the opposite.

    Example:
        >>> judge([9.0, 9.1, 8.9, 9.0, 9.2], [10.0, 10.1, 9.9, 10.2, 10.0]).conclusive
        True
    """
    if len(new) != len(base) or not new:
        msg = f"need the same number of timings on both sides; got {len(new)} and {len(base)}"
        raise ValueError(msg)
    changes = sorted(n / b - 1.0 if b > 0 else math.inf for n, b in zip(new, base, strict=True))
    n = len(changes)
    cut = round(0.1 * (n - 1))  # as many dropped at each end: one in ten rounds
    low, high = changes[cut], changes[n - 1 - cut]
    conclusive = n >= MIN_ROUNDS and (low > 0.0 or high < 0.0)
    return Judgement(statistics.median(changes), low, high, n, conclusive)


def verdict(new_label: str, base_label: str, j: Judgement) -> str:
    """One line that says what ``j`` shows, and whether it shows anything at all."""
    figure = f"time {_pct(j.change)} (rounds {_pct(j.low)} to {_pct(j.high)})"
    head = f"{new_label} against {base_label}: {figure}"
    if j.rounds < MIN_ROUNDS:
        return f"{head}: too few rounds to tell them apart; use --repeat {MIN_ROUNDS} or more"
    if not j.conclusive:
        return (
            f"{head}: the spread between rounds is wider than the difference, so this run "
            "cannot tell them apart on this machine"
        )
    word = "faster" if j.change < 0 else "slower"
    return f"{head}: {new_label} is {word} in at least 80% of the {j.rounds} rounds"


def _ms(x: float) -> str:
    return f"{x:.3g}" if x < 10 else f"{x:,.1f}"


def _pct(change: float) -> str:
    return "n/a" if not math.isfinite(change) else f"{change * 100:+.1f}%"


def _change(new: float, base: float) -> str:
    """``new`` against ``base`` in percent: -90.0% is a tenth of it."""
    return _pct(new / base - 1) if base else "n/a"


# --- building and measuring ----------------------------------------------------------------


class Row(NamedTuple):
    """One variant's figures: what its output holds, its memory, its timings."""

    label: str
    requires_grad: bool
    grad_fn: str
    kept: int
    peak: int
    times: list[float]


class Variant(NamedTuple):
    """A way to run the forward pass, and how to set the model up before a timed call."""

    label: str
    call: Callable[[], Any]
    prepare: Callable[[], Any]


@contextlib.contextmanager
def _current_directory_importable() -> Iterator[None]:
    # `python -m gradguard` puts the current directory on sys.path; the console script
    # puts its own bin directory there instead. --model is looked up as from the former.
    cwd = os.getcwd()
    added = cwd not in sys.path and "" not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def _load_factory(spec: str) -> Callable[[], Any]:
    module_name, _, factory_name = spec.partition(":")
    if not module_name or not factory_name:
        msg = f"--model must look like module:factory; got {spec!r}"
        raise UsageError(msg)
    try:
        with _current_directory_importable():
            factory = getattr(importlib.import_module(module_name), factory_name)
    except Exception as error:  # an ImportError, or anything the user's module raises
        msg = (
            f"--model {spec!r}: cannot load it ({type(error).__name__}: {error}); run from "
            "where the module imports (or set PYTHONPATH) and name a function defined in it"
        )
        raise UsageError(msg) from None
    if not callable(factory):
        msg = f"--model {spec!r} names a {type(factory).__name__}; name a function"
        raise UsageError(msg)
    return factory  # type: ignore[no-any-return]


def _input_for(args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    import torch

    try:
        shape = tuple(int(d) for d in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if not shape or any(d <= 0 for d in shape):
        msg = (
            "--input-shape must be positive whole numbers separated by commas; "
            f"got {args.input_shape!r}"
        )
        raise UsageError(msg)
    dtype = getattr(torch, args.input_dtype, None)
    if not isinstance(dtype, torch.dtype):
        msg = (
            "--input-dtype must name a torch dtype such as float32 or int64; "
            f"got {args.input_dtype!r}"
        )
        raise UsageError(msg)
    x = torch.ones(shape, dtype=dtype, device=device)
    if x.is_floating_point():
        x.requires_grad_(True)
    return x


def _build(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, torch.Tensor, str]:
    import torch
    from torch import nn

    if args.model:
        factory = _load_factory(args.model)
        if not args.input_shape:
            msg = "--model needs --input-shape, e.g. --input-shape 8,3,224,224"
            raise UsageError(msg)
        x = _input_for(args, device)
        try:
            model = factory()
        except Exception as error:
            msg = f"--model {args.model!r}: calling it raised {type(error).__name__}: {error}"
            raise UsageError(msg) from None
        if not isinstance(model, nn.Module):
            msg = (
                f"--model {args.model!r} returned a {type(model).__name__}, not an nn.Module; "
                "name a function that builds and returns the model"
            )
            raise UsageError(msg)
        return model.to(device), x, f"{args.model}, input {args.input_shape} ({args.input_dtype})"

    sizes = dict(ARTICLE if (device.type != "cpu" or args.full) else CPU_DEFAULT)
    for key in sizes:
        value = getattr(args, key)
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

    try:
        model = SimpleModel().to(device)
        x = torch.ones(sizes["batch"], sizes["in_features"], device=device)
    except (RuntimeError, MemoryError) as error:
        msg = (
            f"cannot build the model at these sizes on {device} ({_first_line(error)}); "
            "choose smaller --hidden, --in-features, --out-features or --batch"
        )
        raise UsageError(msg) from None
    x.requires_grad = True
    description = (
        f"SimpleModel: Linear({sizes['in_features']}, {sizes['hidden']}) -> ReLU -> "
        f"Linear({sizes['hidden']}, {sizes['out_features']}), input "
        f"ones({sizes['batch']}, {sizes['in_features']}) with requires_grad=True"
    )
    return model, x, description


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _memory(variant: Variant, sync: Callable[[], None]) -> tuple[bool, str, int, int]:
    """Whether the output requires grad, its grad_fn, and the bytes kept and at peak."""
    from ._memory import TensorProbe

    variant.prepare()
    probe = TensorProbe()
    state = probe.start()
    try:
        out = variant.call()
        sync()
    finally:
        _, kept, peak = probe.stop(state)
    requires_grad = bool(getattr(out, "requires_grad", False))
    grad_fn = getattr(out, "grad_fn", None)
    return (
        requires_grad,
        "None" if grad_fn is None else type(grad_fn).__name__,
        kept or 0,
        peak or 0,
    )


def time_rounds(
    calls: Sequence[Callable[[], Any]],
    rounds: int,
    *,
    prepare: Sequence[Callable[[], Any]] | None = None,
    sync: Callable[[], None] = lambda: None,
    warmup: int = _WARMUP_ROUNDS,
    clock: Callable[[], float] = time.perf_counter,
) -> list[list[float]]:
    """Time ``calls`` in interleaved rounds; per call, its times in ms, one per round.

    In each round every call runs once, starting one further along each round, so that
    none always runs first (after a pause) or right after a particular other. ``prepare``
    (one per call) runs before each call, outside the timed part. ``warmup`` rounds run
    first and are dropped.
    """
    times: list[list[float]] = [[] for _ in calls]
    n = len(calls)
    for r in range(warmup + rounds):
        for k in range(n):
            i = (r + k) % n
            if prepare is not None:
                prepare[i]()
            start = clock()
            calls[i]()
            sync()
            elapsed = (clock() - start) * 1e3
            if r >= warmup:
                times[i].append(elapsed)
    return times


# --- the command -------------------------------------------------------------------------


def parser(prog: str = "gradguard demo") -> argparse.ArgumentParser:
    """The demo's command-line parser."""
    demo = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Run the same forward pass with gradients, under torch.no_grad(), under "
            "torch.inference_mode() and through gradguard.guard(), and compare what each "
            "keeps in memory and how long it takes, in interleaved rounds; then audit the "
            "guarded calls' events."
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


def _device(text: str | None) -> torch.device:
    import torch

    if not text:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError) as error:
        msg = f"--device {text!r}: {_first_line(error)}; use cpu, cuda, cuda:N or mps"
        raise UsageError(msg) from None
    if device.type not in _DEVICE_TYPES:
        msg = f"--device {text!r}: the demo runs on cpu, cuda, cuda:N or mps"
        raise UsageError(msg)
    if device.type == "cuda" and not torch.cuda.is_available():
        msg = "--device cuda: this machine has no CUDA device; use --device cpu"
        raise UsageError(msg)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        msg = f"--device {device}: this machine has {count} CUDA device(s); use cuda:0"
        msg += "" if count == 1 else f" to cuda:{count - 1}"
        raise UsageError(msg)
    if device.type == "mps" and not torch.backends.mps.is_available():
        msg = "--device mps: this machine has no MPS device; use --device cpu"
        raise UsageError(msg)
    return device


class _LogFile(NamedTuple):
    path: str
    offset: int  # the file's size before this run: this run's events start there
    temporary_dir: str | None  # removed at the end unless --keep


def _log_file(args: argparse.Namespace) -> _LogFile:
    if not args.log_file:
        folder = tempfile.mkdtemp(prefix="gradguard-demo-")
        return _LogFile(os.path.join(folder, "demo.jsonl"), 0, folder)
    path: str = args.log_file
    if "{" in path or "}" in path:
        msg = f"--log-file takes a plain path, without {{pid}} or {{rank}}; got {path!r}"
        raise UsageError(msg)
    if os.path.isdir(path):
        example = os.path.join(path, "demo.jsonl")
        msg = f"--log-file {path!r} is a directory; name a file, e.g. {example}"
        raise UsageError(msg)
    try:
        with open(path, "ab"):  # appends: an existing file is never truncated
            pass
        offset = os.path.getsize(path)
    except OSError as error:
        msg = f"--log-file {path!r}: cannot write to it ({error.strerror or error}); check the path"
        raise UsageError(msg) from None
    return _LogFile(path, offset, None)


def _audit_this_run(log: _LogFile) -> str:
    """The audit table of the events this run appended to the log file."""
    from ._audit import Collector, render

    with open(log.path, "rb") as file:
        file.seek(log.offset)
        data = file.read()
    collector = Collector()
    collector.feed(data.rstrip(b"\n").split(b"\n"))
    return render("table", collector.summary([log.path]))


def run(args: argparse.Namespace) -> int:
    """Run the demo with parsed arguments; return the exit status."""
    device = _device(args.device)
    model, x, description = _build(args, device)
    log = _log_file(args)
    try:
        return _run(args, model, x, description, device, log)
    finally:
        if log.temporary_dir is not None and not args.keep:
            shutil.rmtree(log.temporary_dir, ignore_errors=True)


def _run(
    args: argparse.Namespace,
    model: nn.Module,
    x: torch.Tensor,
    description: str,
    device: torch.device,
    log: _LogFile,
) -> int:
    import torch

    import gradguard

    from ._audit._render import format_bytes

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # Does the model run on this input at all? Checked before anything is printed.
    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception as error:
        msg = (
            f"the model cannot run on this input ({_first_line(error)}); "
            "check --input-shape and --input-dtype"
        )
        raise UsageError(msg) from None
    model.train()  # as a freshly built model is: the guarded variant has to switch it

    print(
        f"gradguard demo on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )
    print(f"  {description}")
    sized = any(getattr(args, key) is not None for key in CPU_DEFAULT)
    if device.type == "cpu" and not (args.full or args.model or sized):
        print(
            "  CPU-only run: sizes are a tenth of the article's, so that it finishes in under "
            "a minute; --full runs the article's sizes."
        )
    print(
        f"  {args.repeat} timed rounds after {_WARMUP_ROUNDS} warm-up rounds; each round calls "
        "every variant once, in a rotating order."
    )
    print()

    gradguard.configure(log_file=log.path)
    try:
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

        # The article's comparison: eval for the three torch variants; the guarded one is
        # handed the model in training mode and switches it itself.
        variants = [
            Variant("with gradients", with_grad, model.eval),
            Variant("torch.no_grad()", no_grad, model.eval),
            Variant("torch.inference_mode()", inference, model.eval),
            Variant("gradguard.guard(model)", lambda: guarded(x), model.train),
        ]
        memory = [_memory(v, sync) for v in variants]
        model.train()
        guarded_memory(x)  # exact accounting, logged with mem_kind="tensors"
        times = time_rounds(
            [v.call for v in variants],
            args.repeat,
            prepare=[v.prepare for v in variants],
            sync=sync,
        )
        model.train()
        gradguard.flush()
    finally:
        gradguard.configure(log_file=None)
    rows = [Row(v.label, *m, t) for v, m, t in zip(variants, memory, times, strict=True)]

    print(
        f"{'':24} {'requires_grad':>13} {'grad_fn':>16} {'memory kept':>12} {'peak':>12}"
        "   time/call: median (min-max)"
    )
    for row in rows:
        print(
            f"{row.label:24} {row.requires_grad!s:>13} {row.grad_fn:>16} "
            f"{format_bytes(row.kept):>12} {format_bytes(row.peak):>12}   {spread(row.times)}"
        )
    base = rows[0]
    print()
    print(
        "Change against the call with gradients (negative: less); time: the median of the "
        "per-round ratios, and the range of 80% of the rounds:"
    )
    for row in rows[1:]:
        j = judge(row.times, base.times)
        print(
            f"  {row.label:24} memory kept {_change(row.kept, base.kept):>7}, "
            f"peak {_change(row.peak, base.peak):>7}, time {_pct(j.change):>7} "
            f"({_pct(j.low)} to {_pct(j.high)})"
        )
    print()
    by_label = {row.label: row for row in rows}
    for new, old in (
        ("torch.inference_mode()", "torch.no_grad()"),
        ("gradguard.guard(model)", "torch.inference_mode()"),
    ):
        j = judge(by_label[new].times, by_label[old].times)
        print(verdict(new, old, j))
    print()
    print("The audit of this run's events:\n")
    sys.stdout.write(_audit_this_run(log))
    print()
    if log.temporary_dir is None or args.keep:
        print(f"The guarded calls' events are in {log.path}")
    else:
        print(
            "The guarded calls' events went to a temporary file, now removed: --keep keeps "
            "it, --log-file FILE appends them to FILE."
        )
    return 0
