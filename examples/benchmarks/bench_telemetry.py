"""Cost of gradguard's telemetry, beside the bare torch decorator in the same run.

Run: python examples/benchmarks/bench_telemetry.py

Prints the three figures the README quotes: logging off (or the call sampled out) as a
ratio to ``@torch.inference_mode()``; a full event (time, RSS before/after, one JSON line
to a file through structlog and orjson) in µs above that decorator; and the overhead of
full telemetry on a small MLP forward, in percent.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable

import torch
from _timing import arguments, best_us, compare_us  # beside this script
from torch import nn

import gradguard


def main() -> None:
    n, r = arguments(__doc__)
    torch.set_num_threads(1)

    def noop() -> None:
        return None

    bare = torch.inference_mode()(noop)
    quiet = gradguard.infer(log=False, name="bench.off")(noop)
    sampled_out = gradguard.infer(sample=0.0001, name="bench.sampled")(noop)
    full = gradguard.infer(name="bench.full")(noop)

    with tempfile.TemporaryDirectory() as tmp:
        # Telemetry alone: the leak sentinel's own cost is in bench_core.py.
        gradguard.configure(log_file=os.path.join(tmp, "calls.jsonl"), seed=0, leaks="off")
        noop_times = compare_us(
            {"bare": bare, "off": quiet, "sampled": sampled_out, "full": full}, n // 4 or 1, r
        )
        bare_t, off_t, sampled_t, full_t = noop_times.values()

        mlp = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 256)).eval()
        x = torch.randn(32, 256)
        bare_mlp = torch.inference_mode()(lambda: mlp(x))
        quiet_mlp = gradguard.infer(log=False, name="bench.mlp.off")(lambda: mlp(x))
        no_memory_mlp = gradguard.infer(memory=False, name="bench.mlp.nomem")(lambda: mlp(x))
        full_mlp = gradguard.infer(name="bench.mlp")(lambda: mlp(x))
        m = max(n // 20, 1)
        mlp_times = compare_us(
            {"bare": bare_mlp, "off": quiet_mlp, "nomem": no_memory_mlp, "full": full_mlp}, m, r
        )
        mlp_bare, mlp_off, mlp_nomem, mlp_full = mlp_times.values()
        cold_statm = _statm_after(lambda: bare_mlp(), m, r)
        with open(os.path.join(tmp, "calls.jsonl"), "rb") as written:
            lines = sum(1 for _ in written)
        structlog_t, statm_t = _references(tmp, n, r)

    orjson = "orjson" if _has_orjson() else "stdlib json"
    print(f"torch {torch.__version__}, 1 thread, events rendered with {orjson}")
    print("no-op call, µs per call, against @torch.inference_mode() in the same run")
    print(f"  @torch.inference_mode()             {bare_t:7.3f}   1.00x")
    print(f"  gradguard, logging off              {off_t:7.3f}   {off_t / bare_t:.2f}x")
    print(f"  gradguard, call sampled out         {sampled_t:7.3f}   {sampled_t / bare_t:.2f}x")
    print(
        f"  gradguard, full event to a file     {full_t:7.3f}   "
        f"+{full_t - bare_t:.2f} µs above the decorator"
    )
    print("for reference, in the same run (what a full event cannot avoid)")
    print(
        f"  structlog + orjson + BytesLogger,   {structlog_t:7.3f}   one 25-field event, alone; "
        f"the full event costs {(full_t - bare_t) / structlog_t:.2f}x that"
    )
    print(f"  two reads of /proc/self/statm       {statm_t:7.3f}")
    print(f"small MLP forward (32x256 -> 512 -> 256), µs per call; {lines} JSON lines written")
    print(f"  @torch.inference_mode()             {mlp_bare:7.1f}")
    for label, value in (
        ("logging off (eval check, mode)", mlp_off),
        ("full event, memory=False", mlp_nomem),
        ("full event to a file", mlp_full),
    ):
        print(f"  gradguard, {label:<32s}{value:7.1f}   {(value / mlp_bare - 1) * 100:+.1f}%")
    print(f"  one read of /proc/self/statm, right after a forward: {cold_statm:.2f} µs")


def _references(tmp: str, n: int, r: int) -> tuple[float, float]:
    """The cost of a bare structlog event and of the two RSS reads, measured alike."""
    import logging

    import orjson
    import structlog

    with open(os.path.join(tmp, "reference.jsonl"), "ab") as out:
        logger = structlog.wrap_logger(
            structlog.BytesLogger(out),
            processors=[
                structlog.contextvars.merge_contextvars,
                structlog.processors.JSONRenderer(serializer=orjson.dumps),
            ],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            cache_logger_on_first_use=True,
        ).bind()
        fields = {f"field_{i}": i * 1.5 if i % 2 else f"value {i}" for i in range(24)}
        structlog_t = best_us(lambda: logger.info("gradguard.call", **fields), n // 4, r)
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    try:
        statm_t = best_us(lambda: (os.pread(fd, 64, 0), os.pread(fd, 64, 0)), n, r)
    finally:
        os.close(fd)
    return structlog_t, statm_t


def _statm_after(forward: Callable[[], object], number: int, repeat: int) -> float:
    """µs of one RSS read made right after ``forward``, as a logged call makes it.

    A system call after a forward finds the caches full of the model's data: it costs
    more than the same call in a tight loop.
    """
    fd = os.open("/proc/self/statm", os.O_RDONLY)
    clock = time.perf_counter_ns
    best = float("inf")
    try:
        for _ in range(repeat):
            total = 0
            for _ in range(number):
                forward()
                start = clock()
                os.pread(fd, 64, 0)
                total += clock() - start
            best = min(best, total / number / 1000)
    finally:
        os.close(fd)
    return best


def _has_orjson() -> bool:
    try:
        import orjson  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()
