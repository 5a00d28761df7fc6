"""Benchmark ``gradguard audit``: records per second on one core, and peak memory.

Writes N realistic ``gradguard.call`` events (default 500,000, about 540 bytes
each, with a few leaks, errors, fallbacks and foreign lines) to a temporary
file, then runs the audit in fresh subprocesses pinned to one CPU:

- with orjson (when installed) and with the standard library's json;
- the JSON decoding alone (orjson.loads per line), as the ceiling any
  Python-level audit can reach on this machine;
- under tracemalloc at two sizes (N/5 and N), to show that memory stays flat
  as records grow.

Usage:
    python examples/benchmarks/bench_audit.py [-n 500000] [--repeat 3] [--gzip]

It prints figures; it asserts nothing. Rates use the best of ``--repeat``
runs of the child's CPU time (``time.process_time``), which is what one core
delivers even when other work shares the machine; wall-clock time is shown
beside it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOAL = 500_000

TARGETS = ("encoder.forward", "decoder.forward", "lm_head", "embed", "vision.tower",
           "pipeline.preprocess", "Reranker.score", "generate")  # fmt: skip


def write_events(path: Path, n: int, seed: int = 0, compress: bool = False) -> None:
    """Write ``n`` lines: mostly call events, plus leaks and other application events."""
    rng = random.Random(seed)
    dumps = json.dumps
    opener = gzip.open if compress else open
    with opener(path, "wt", encoding="utf-8") as out:
        for i in range(n):
            rank = rng.randrange(8)
            second, micro = divmod(i * 1000, 1_000_000)
            ts = f"2026-11-27T{10 + second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}"
            ts += f".{micro:06d}Z"
            if i % 5000 == 4999:
                event = {"event": "gradguard.leak", "schema": 1, "timestamp": ts,
                         "target": rng.choice(TARGETS), "pid": 4000 + rank, "host": "node-0",
                         "rank": rank, "device": f"cuda:{rank}", "level": "warning"}  # fmt: skip
            elif i % 997 == 0:
                event = {"event": "http.request", "timestamp": ts, "path": "/v1/infer",
                         "status_code": 200, "level": "info"}  # fmt: skip
            else:
                status = "error" if rng.random() < 0.001 else "ok"
                fallback = rng.random() < 0.01
                wall = rng.lognormvariate(1.5, 0.8)
                event = {
                    "event": "gradguard.call", "schema": 1, "timestamp": ts,
                    "level": "error" if status == "error" else "info",
                    "target": rng.choice(TARGETS),
                    "kind": rng.choice(("function", "module", "scope")),
                    "mode": "no_grad" if fallback or rng.random() < 0.05 else "inference",
                    "fallback": fallback, "status": status,
                    "wall_ms": round(wall, 4), "gpu_ms": round(wall * 0.8, 4),
                    "device": f"cuda:{rank}", "mem_kind": "allocator",
                    "mem_before_bytes": 2_147_483_648 + rng.randrange(1 << 20),
                    "mem_after_bytes": 2_147_483_648 + rng.randrange(1 << 20),
                    "mem_peak_bytes": 3_221_225_472 + rng.randrange(1 << 28),
                    "eval_switched": rng.randrange(3), "call": i + 1, "pid": 4000 + rank,
                    "host": f"node-{rank // 4}", "thread": "MainThread",
                    "rank": rank, "world_size": 8,
                    "grad_recorded": False, "training_modules": 0,
                    "request_id": f"req-{rng.getrandbits(48):012x}", "model_version": "2026.11.3",
                }  # fmt: skip
                if status == "error":
                    event["error"] = "RuntimeError: CUDA out of memory"
            out.write(dumps(event, separators=(",", ":")) + "\n")


# --- measurements, each run in a fresh child process ---------------------------------------------


def _child(mode: str, path: str, repeat: int) -> None:
    """Run one measurement in this (fresh) process and print one JSON line."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    if mode not in ("msgspec", "typed"):
        sys.modules["msgspec"] = None  # type: ignore[assignment]  # no typed batch decoding
    if mode == "json":
        sys.modules["orjson"] = None  # type: ignore[assignment]  # force the stdlib fallback
    sys.path.insert(0, str(ROOT))
    from gradguard._audit import JSON_BACKEND, summarize
    from gradguard._audit._reader import iter_line_batches

    result: dict[str, object] = {"backend": "msgspec" if mode == "msgspec" else JSON_BACKEND}
    if mode == "decode":
        import orjson

        cpu = wall = float("inf")
        for _ in range(repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            loads = orjson.loads
            n = 0
            for batch in iter_line_batches([path]):
                n += len(batch)
                for line in batch:
                    loads(line)
            cpu = min(cpu, time.process_time() - start_cpu)
            wall = min(wall, time.perf_counter() - start)
        result.update(lines=n, cpu=cpu, wall=wall)
    elif mode == "typed":
        from gradguard._audit._typed import batch_decoder

        decode = batch_decoder()
        assert decode is not None, "the typed figure needs msgspec: pip install msgspec"
        cpu = wall = float("inf")
        for _ in range(repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            n = 0
            for batch in iter_line_batches([path]):
                n += len(decode(batch) or ())
            cpu = min(cpu, time.process_time() - start_cpu)
            wall = min(wall, time.perf_counter() - start)
        result.update(lines=n, cpu=cpu, wall=wall)
    elif mode == "memory":
        import resource
        import tracemalloc

        tracemalloc.start()
        summary = summarize([path])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        result.update(records=summary.totals.calls, peak_bytes=peak, max_rss_bytes=rss_kib * 1024)
    else:
        cpu = wall = float("inf")
        for _ in range(repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            summary = summarize([path])
            cpu = min(cpu, time.process_time() - start_cpu)
            wall = min(wall, time.perf_counter() - start)
        t = summary.totals
        result.update(
            cpu=cpu, wall=wall, lines=t.calls + t.leaks + summary.skipped, records=t.calls,
            groups=len(summary.groups),
        )  # fmt: skip
    print(json.dumps(result))


def _measure(mode: str, path: Path, repeat: int) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path), "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return result


def main() -> None:
    """Generate the logs, run the measurements, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500_000, help="events to generate")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument("--gzip", action="store_true", help="compress the generated log")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], args.child[1], args.repeat)
        return
    try:
        import orjson  # noqa: F401

        has_orjson = True
    except ImportError:
        has_orjson = False

    with tempfile.TemporaryDirectory() as tmp:
        suffix = ".jsonl.gz" if args.gzip else ".jsonl"
        big, small = Path(tmp, "big" + suffix), Path(tmp, "small" + suffix)
        print(f"writing {args.n:,} events ...", flush=True)
        write_events(big, args.n, compress=args.gzip)
        # The small size stays above the collector's flush interval (65,536 lines), so
        # both runs reach the steady state where only the per-group state remains.
        write_events(small, max(args.n // 5, 1), compress=args.gzip)
        size = big.stat().st_size
        print(
            f"log: {args.n:,} lines, {size / 1e6:,.1f} MB on disk"
            f"{' (gzip)' if args.gzip else f', {size / args.n:.0f} bytes/line'}; "
            f"python {sys.version.split()[0]}, pinned to one core, best of {args.repeat}"
        )

        try:
            import msgspec  # noqa: F401

            modes: tuple[str, ...] = ("msgspec",)
        except ImportError:
            modes = ()
        modes += ("orjson", "json") if has_orjson else ("json",)
        rates: dict[str, float] = {}
        for mode in modes:
            r = _measure(mode, big, args.repeat)
            rate = float(r["lines"]) / float(r["cpu"])  # type: ignore[arg-type]
            rates[mode] = rate
            print(
                f"audit with {r['backend']:<6}     : {rate:>10,.0f} records/s "
                f"({r['cpu']:.2f} s CPU, {r['wall']:.2f} s wall for {r['lines']:,} lines, "
                f"{r['groups']} groups)"
            )
        if has_orjson:
            r = _measure("decode", big, args.repeat)
            ceiling = float(r["lines"]) / float(r["cpu"])  # type: ignore[arg-type]
            print(
                f"read + orjson.loads only: {ceiling:>10,.0f} lines/s "
                "(one orjson decode per line, for reference)"
            )
        if "msgspec" in rates:
            r = _measure("typed", big, args.repeat)
            ceiling = float(r["lines"]) / float(r["cpu"])  # type: ignore[arg-type]
            print(
                f"read + msgspec decode only: {ceiling:>8,.0f} lines/s "
                "(the audit's own batch decoding, without accounting, for reference)"
            )
        best_mode = max(rates, key=lambda m: rates[m])
        if rates[best_mode] >= GOAL:
            print(f"goal {GOAL:,} records/s: reached with {best_mode}")
        else:
            print(
                f"goal {GOAL:,} records/s: NOT reached on this machine "
                f"(best {rates[best_mode]:,.0f} with {best_mode})"
            )

        print("peak memory while auditing (tracemalloc: Python allocations; max RSS: process):")
        for path in (small, big):
            r = _measure("memory", path, 1)
            print(
                f"  {r['records']:>10,} records: tracemalloc peak "
                f"{float(r['peak_bytes']) / 1e6:6.1f} MB, "  # type: ignore[arg-type]
                f"max RSS {float(r['max_rss_bytes']) / 1e6:6.1f} MB"  # type: ignore[arg-type]
            )


if __name__ == "__main__":
    main()
