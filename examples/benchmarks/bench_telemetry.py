"""Cost of gradguard's telemetry, beside the bare torch decorator in the same run.

Run: python examples/benchmarks/bench_telemetry.py

Every case is timed in interleaved rounds with ``@torch.inference_mode()`` (the best
round is kept), and every timed round of a case that writes ends with
``gradguard.flush()``, so the time spent writing batches off the call path is counted.
The clock is the process's CPU time (``time.process_time``: every thread of the process,
the writer's included), which other processes on a shared machine disturb far less than
the wall clock.
Cases: logging off; unconfigured (the default: aggregates only, and it must print
nothing); sampled out of a log file (aggregates only); a full event to a file; the
aggregates read by a Prometheus scrape each round; OpenTelemetry's duration histogram
(through the SDK when installed, else the API's no-op); and a small MLP forward with
full events.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time
from collections.abc import Callable

import torch
from _timing import arguments  # beside this script
from torch import nn

import gradguard

Setup = Callable[[], None]


def compare_us(
    cases: dict[str, tuple[Callable[[], object], Setup, Setup]], number: int, repeat: int
) -> dict[str, float]:
    """Best µs per call of each case, interleaved; ``(fn, before, after)`` per case:
    ``before`` configures (not timed), ``after`` ends the round (timed: flush, scrape)."""
    best = dict.fromkeys(cases, float("inf"))
    clock = time.process_time
    for _ in range(repeat):
        for name, (fn, before, after) in cases.items():
            before()
            start = clock()
            for _ in range(number):
                fn()
            after()
            best[name] = min(best[name], (clock() - start) / number * 1e6)
    return best


def main() -> None:
    n, r = arguments(__doc__)
    torch.set_num_threads(1)

    def noop() -> None:
        return None

    nothing: Setup = lambda: None  # noqa: E731
    bare = torch.inference_mode()(noop)
    quiet = gradguard.infer(log=False, name="bench.off")(noop)
    default = gradguard.infer(name="bench.default")(noop)
    sampled_out = gradguard.infer(sample=0.0, name="bench.sampled")(noop)
    full = gradguard.infer(name="bench.full")(noop)
    full_no_memory = gradguard.infer(name="bench.full.nomem", memory=False)(noop)
    otel_target = gradguard.infer(name="bench.otel")(noop)
    otel_backend = _otel_sdk()

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "calls.jsonl")

        def unconfigured() -> None:
            gradguard.configure(log_file=None, console=False, otel=False, leaks="off", seed=0)

        def to_file() -> None:
            gradguard.configure(log_file=path, otel=False, leaks="off", seed=0)

        def with_otel() -> None:
            gradguard.configure(log_file=None, otel=True, leaks="off")

        scrape = _scraper()
        unconfigured()
        printed = _printed_by(lambda: [default() for _ in range(1000)])
        noop_times = compare_us(
            {
                "bare": (bare, nothing, nothing),
                "off": (quiet, unconfigured, nothing),
                "default": (default, unconfigured, gradguard.flush),
                "sampled": (sampled_out, to_file, gradguard.flush),
                "full": (full, to_file, gradguard.flush),
                "full_nomem": (full_no_memory, to_file, gradguard.flush),
                "prometheus": (default, unconfigured, scrape),
                "otel": (otel_target, with_otel, gradguard.flush),
            },
            n // 4 or 1,
            r,
        )

        mlp = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()
        x = torch.randn(32, 256)
        bare_mlp = torch.inference_mode()(lambda: mlp(x))
        default_mlp = gradguard.infer(name="bench.mlp.default")(lambda: mlp(x))
        no_memory_mlp = gradguard.infer(memory=False, name="bench.mlp.nomem")(lambda: mlp(x))
        full_mlp = gradguard.infer(name="bench.mlp")(lambda: mlp(x))
        m = max(n // 20, 1)
        mlp_times = compare_us(
            {
                "bare": (bare_mlp, nothing, nothing),
                "default": (default_mlp, unconfigured, gradguard.flush),
                "nomem": (no_memory_mlp, to_file, gradguard.flush),
                "full": (full_mlp, to_file, gradguard.flush),
            },
            m,
            r,
        )
        gradguard.flush()
        with open(path, "rb") as written:
            lines = sum(1 for _ in written)

    t = noop_times
    b = t["bare"]
    print(f"torch {torch.__version__}, 1 thread; OpenTelemetry: {otel_backend}")
    print("clock: process CPU time (all threads), best of interleaved rounds")
    print("no-op call, µs per call, against @torch.inference_mode() in the same run")
    print(f"  @torch.inference_mode()                 {b:7.3f}   1.00x")
    rows = (
        ("gradguard, logging off (log=False)", "off"),
        ("gradguard, unconfigured (aggregates)", "default"),
        ("gradguard, sampled out of a log file", "sampled"),
        ("gradguard, aggregates + Prometheus", "prometheus"),
        ("gradguard, OpenTelemetry histogram", "otel"),
        ("gradguard, full event, memory=False", "full_nomem"),
        ("gradguard, full event to a file", "full"),
    )
    for label, key in rows:
        value = t[key]
        print(f"  {label:<40s}{value:7.3f}   {value / b:.2f}x   +{value - b:.2f} µs")
    print(f"  unconfigured: {len(printed)} characters printed by 1000 calls")
    print(f"  aggregates over logging off: +{t['default'] - t['off']:.2f} µs per call")
    print(f"small MLP forward (32x256 -> 512 -> 256), µs per call; {lines} JSON lines written")
    mb = mlp_times["bare"]
    print(f"  @torch.inference_mode()                 {mb:7.1f}")
    for label, key in (
        ("unconfigured (aggregates)", "default"),
        ("full event, memory=False", "nomem"),
        ("full event to a file", "full"),
    ):
        value = mlp_times[key]
        print(f"  gradguard, {label:<29s}{value:7.1f}   {value / mb:.3f}x")


def _printed_by(fn: Callable[[], object]) -> str:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        fn()
        gradguard.flush()
    return out.getvalue() + err.getvalue()


def _scraper() -> Callable[[], None]:
    """One Prometheus scrape (collect and render the exposition), or nothing without it."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
    except ImportError:
        return lambda: None
    registry = CollectorRegistry()
    registry.register(gradguard.prometheus_collector())
    return lambda: [generate_latest(registry)][0] and None


def _otel_sdk() -> str:
    """Install the SDK's meter provider with an in-memory reader, when the SDK is there."""
    try:
        from opentelemetry import metrics
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    except ImportError:
        return "API only (no-op provider)"
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    return "SDK MeterProvider, in-memory reader"


if __name__ == "__main__":
    main()
