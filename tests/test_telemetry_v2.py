"""Telemetry v2: quiet by default, in-process aggregates, a file sink that loses nothing,
and exporters to Prometheus and OpenTelemetry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradguard
from gradguard import _telemetry
from gradguard.testing import capture_events

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
for _variable in list(ENV):
    if _variable.startswith("GRADGUARD_"):
        del ENV[_variable]


def read_lines(path: Path) -> list[dict[str, Any]]:
    gradguard.flush()
    return [json.loads(line) for line in path.read_text().splitlines()]


def run_python(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- quiet by default -----------------------------------------------------------------


def test_unconfigured_guarded_calls_write_nothing_to_stdout_or_stderr() -> None:
    done = run_python(
        """
        import torch, gradguard
        from torch import nn
        model = gradguard.guard(nn.Linear(2, 2))
        @gradguard.infer
        def predict(x):
            return model(x)
        for _ in range(50):
            predict(torch.ones(1, 2))
        with gradguard.scope(model):
            model(torch.ones(1, 2))
        calls = {s["key"]: s["calls"] for s in gradguard.stats()}
        assert calls["__main__:predict"] == 50, calls
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr == ""


def test_console_variable_turns_console_lines_on() -> None:
    done = run_python(
        """
        import gradguard
        gradguard.infer(name="shown")(lambda: None)()
        """,
        GRADGUARD_CONSOLE="1",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "gradguard.call" in done.stderr and "target=shown" in done.stderr


def test_stdlib_logging_alone_gets_no_per_call_records() -> None:
    done = run_python(
        """
        import logging, gradguard
        logging.basicConfig(level=logging.DEBUG)
        gradguard.infer(name="quiet")(lambda: None)()
        gradguard.flush()
        """
    )
    assert done.returncode == 0, done.stderr
    assert "gradguard.call" not in done.stdout + done.stderr


# --- aggregates -----------------------------------------------------------------------


def test_stats_equal_the_audit_of_the_same_calls_log(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    gradguard.configure(log_file=str(log))
    model = nn.Linear(8, 8)

    @gradguard.infer(name="ok")
    def ok(n: int) -> torch.Tensor:
        x = torch.ones(n, 8)
        return model(x)

    @gradguard.infer(name="failing")
    def failing() -> None:
        raise KeyError("no")

    @gradguard.infer(name="grad", mode="no_grad")
    def grad_out() -> torch.Tensor:
        return torch.ones(2, requires_grad=True)

    for i in range(300):
        ok(1 + i % 50)
    for _ in range(7):
        with pytest.raises(KeyError):
            failing()
    for _ in range(3):
        grad_out()
    gradguard.flush()
    assert _telemetry.PIPELINE.dropped == 0
    done = subprocess.run(
        [sys.executable, "-m", "gradguard", "audit", "--format", "json", str(log)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    audit = {g["key"]: g for g in json.loads(done.stdout)["groups"]}
    mine = {s["key"]: s for s in gradguard.stats()}
    assert set(mine) == set(audit) == {"ok", "failing", "grad"}
    for key, theirs in audit.items():
        ours = mine[key]
        for exact in ("calls", "errors", "modes", "fallbacks", "grad_calls", "leaks", "devices"):
            assert ours[exact] == theirs[exact], (key, exact)
        for measure in ("wall_ms", "mem_peak_bytes"):
            a, b = ours[measure], theirs[measure]
            assert (a is None) == (b is None), (key, measure)
            if a is None:
                continue
            assert a["count"] == b["count"]
            for q in ("p50", "p95", "p99", "min", "max"):
                # The log rounds nothing but float formatting: within the sketch's 1%.
                assert a[q] == pytest.approx(b[q], rel=0.01), (key, measure, q)
    assert mine["failing"]["errors"] == 7
    assert mine["grad"]["modes"] == {"inference": 0, "no_grad": 3}
    assert mine["grad"]["grad_calls"] == 3


def test_report_prints_the_audit_table(capsys: pytest.CaptureFixture[str]) -> None:
    target = gradguard.infer(name="reported")(lambda: None)
    for _ in range(4):
        target()
    gradguard.report()
    out = capsys.readouterr().out
    assert "wall p95" in out
    row = next(line for line in out.splitlines() if line.startswith("reported"))
    assert row.split()[1] == "4"


def test_threads_recording_into_one_target_lose_no_count() -> None:
    target = gradguard.infer(name="busy")(lambda: None)

    def work() -> None:
        for _ in range(5000):
            target()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    (busy,) = [s for s in gradguard.stats() if s["key"] == "busy"]
    assert busy["calls"] == busy["wall_ms"]["count"] == 30_000
    assert busy["modes"]["inference"] == 30_000


def test_sketch_keeps_a_sum_and_folds_under_concurrent_appends() -> None:
    from gradguard._audit._sketch import LogSketch

    sketch = LogSketch()
    stop = threading.Event()

    def fold() -> None:
        while not stop.is_set():
            sketch.flush()

    folder = threading.Thread(target=fold)
    folder.start()
    try:
        for value in range(1, 200_001):
            sketch.add(float(value % 100 + 1))
    finally:
        stop.set()
        folder.join()
    assert sketch.count == 200_000
    assert sketch.sum == sum(float(v % 100 + 1) for v in range(1, 200_001))


# --- the file sink --------------------------------------------------------------------


def _calls(n: int, name: str = "sunk") -> None:
    target = gradguard.infer(name=name)(lambda: None)
    for _ in range(n):
        target()


def test_a_file_renamed_or_deleted_away_is_reopened_at_its_path(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    gradguard.configure(log_file=str(log))
    _calls(3)
    gradguard.flush()
    log.rename(tmp_path / "calls.jsonl.1")  # logrotate's rename
    _calls(2)
    gradguard.flush()
    assert len(read_lines(tmp_path / "calls.jsonl.1")) == 3
    assert len(read_lines(log)) == 2
    log.unlink()  # deleted away
    _calls(4)
    assert len(read_lines(log)) == 4


def test_a_truncated_file_keeps_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    gradguard.configure(log_file=str(log))
    _calls(3)
    gradguard.flush()
    os.truncate(log, 0)  # copytruncate
    _calls(2)
    assert len(read_lines(log)) == 2


def test_a_torn_last_line_is_never_glued_to(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    log.write_bytes(b'{"event": "gradguard.call", "tor')  # a process killed mid-write
    gradguard.configure(log_file=str(log))
    _calls(2)
    gradguard.flush()
    lines = log.read_bytes().split(b"\n")
    assert lines[0] == b'{"event": "gradguard.call", "tor'
    assert [json.loads(line)["target"] for line in lines[1:] if line] == ["sunk", "sunk"]


class _ShortFile:
    """A descriptor on a filling disk: writes ``room`` bytes in all, then ENOSPC."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.data = b""
        self.closed = False

    def write(self, data: Any) -> int:
        if self.room <= 0:
            raise OSError(28, "No space left on device")
        taken = bytes(data[: min(self.room, 40)])  # short writes of at most 40 bytes
        self.room -= len(taken)
        self.data += taken
        return len(taken)

    def close(self) -> None:
        self.closed = True


def test_a_short_write_leaves_at_most_one_torn_line_and_counts_the_rest(tmp_path: Path) -> None:
    from gradguard._telemetry._sinks import FileSink

    sink = FileSink(str(tmp_path / "s.jsonl"), None)
    sink._reopen_if_moved = lambda: None  # type: ignore[method-assign]
    fake = _ShortFile(room=250)
    sink.file = fake  # type: ignore[assignment]
    lines = [json.dumps({"n": i}).encode() + b"\n" * 0 + b" " * 90 + b"\n" for i in range(5)]
    with pytest.raises(OSError, match="No space") as caught:
        sink.write(lines)
    assert fake.data.count(b"\n") == 2  # two whole lines, then one torn
    assert caught.value.lost == 3  # type: ignore[attr-defined]
    fake.room = 10_000  # space again: the next write starts on a fresh line
    sink.write([b'{"n": 9}\n'])
    parts = fake.data.split(b"\n")
    assert parts[-2] == b'{"n": 9}' and parts[-1] == b""
    assert [json.loads(p)["n"] for p in parts[:2]] == [0, 1]


def test_configure_swapping_the_file_under_six_threads_loses_no_event(tmp_path: Path) -> None:
    gradguard.configure(log_file=str(tmp_path / "swap-0.jsonl"))
    target = gradguard.infer(name="swapped")(lambda: None)
    per_thread = 2000

    def work() -> None:
        for _ in range(per_thread):
            target()

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    swaps = 0
    while any(t.is_alive() for t in threads):
        swaps += 1
        gradguard.configure(log_file=str(tmp_path / f"swap-{swaps % 3}.jsonl"))
    for thread in threads:
        thread.join()
    gradguard.flush()
    lines = [
        json.loads(line)
        for path in tmp_path.glob("swap-*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(lines) == 6 * per_thread
    assert _telemetry.PIPELINE.dropped == 0


def test_fork_and_spawn_workers_write_every_event(tmp_path: Path) -> None:
    script = tmp_path / "workers.py"  # spawn imports the main module again: a file
    script.write_text(
        textwrap.dedent(f"""
        import multiprocessing as mp, gradguard, os
        gradguard.configure(log_file={str(tmp_path / "w-{pid}.jsonl")!r})
        target = gradguard.infer(name="worker")(lambda: None)
        def work(n):
            for _ in range(n):
                target()
            # A worker's figures are its own: a forked one starts without the parent's.
            calls = [s["calls"] for s in gradguard.stats() if s["key"] == "worker"]
            assert calls == [n], calls
        if __name__ == "__main__":
            for _ in range(5):
                target()  # waiting in the parent's batch when it forks
            for method in ("fork", "spawn"):
                ctx = mp.get_context(method)
                p = ctx.Process(target=work, args=(37,))
                p.start(); p.join()
                assert p.exitcode == 0
        """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], env=ENV, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    counts = sorted(len(read_lines(path)) for path in tmp_path.glob("w-*.jsonl"))
    assert counts == [5, 37, 37]  # the forked child inherits none of the parent's events


def test_kill_9_then_restart_every_line_parses(tmp_path: Path) -> None:
    log = tmp_path / "killed.jsonl"
    script = f"""
        import gradguard, sys
        gradguard.configure(log_file={str(log)!r})
        target = gradguard.infer(name="killed")(lambda: None)
        for _ in range(300):
            target()
        gradguard.flush()
        print("flushed", flush=True)
        while True:
            target()
        """
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "flushed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    with log.open("ab") as file:
        file.write(b'{"event":"gradguard.call","torn')  # as if killed inside a write
    restarted = run_python(
        f"""
        import gradguard
        gradguard.configure(log_file={str(log)!r})
        for _ in range(3):
            gradguard.infer(name="restarted")(lambda: None)()
        """
    )
    assert restarted.returncode == 0, restarted.stderr
    raw = log.read_bytes().split(b"\n")
    parsed = []
    torn = 0
    for line in raw:
        if not line:
            continue
        try:
            parsed.append(json.loads(line))
        except ValueError:
            torn += 1
    assert torn == 1  # only the line the kill tore
    targets = [event["target"] for event in parsed]
    assert targets.count("killed") >= 300  # everything flushed before the kill
    assert targets.count("restarted") == 3


def test_a_full_queue_drops_counts_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gradguard._telemetry import _pipeline

    monkeypatch.setattr(_pipeline, "QUEUE_LIMIT", 5)
    monkeypatch.setattr(_pipeline, "BATCH", 10**9)
    log = tmp_path / "d.jsonl"
    gradguard.configure(log_file=str(log))
    with pytest.warns(gradguard.TelemetryWarning, match="dropped 1 event") as caught:
        _calls(8)
    assert len([w for w in caught if "dropped" in str(w.message)]) == 1
    assert _telemetry.PIPELINE.dropped == 3
    lines = read_lines(log)
    assert [e["event"] for e in lines].count("gradguard.call") == 5
    (told,) = [e for e in lines if e["event"] == "gradguard.dropped"]
    assert told["dropped"] == 3


def test_importing_works_without_register_at_fork() -> None:
    done = run_python(
        """
        import os
        import torch  # torch itself needs os.register_at_fork; gradguard must not
        del os.register_at_fork
        import gradguard
        gradguard.infer(name="f")(lambda: None)()
        assert gradguard.stats()[0]["calls"] == 1
        """
    )
    assert done.returncode == 0, done.stderr


# --- CUDA timing logic, with fake events -----------------------------------------------


class _FakeEvent:
    def __init__(self) -> None:
        self.recorded = 0

    def record(self, stream: Any = None) -> None:
        self.recorded += 1

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: Any) -> float:
        return 2.0


def test_timing_events_are_reused_from_a_pool() -> None:
    import contextvars

    from gradguard._telemetry._cuda import EventPool, Waiting

    pool = EventPool(new=_FakeEvent, keep=4)
    waiting = Waiting()
    gpu: list[float] = []
    record = _telemetry.CallRecord(
        "t", "function", True, False, None, 1, 0.0, "cuda:0", None, None, None, None, 0, 1,
        "MainThread", None, None, False, 0, contextvars.copy_context(),
    )  # fmt: skip
    import gradguard._telemetry._cuda as cuda

    old = cuda.POOL
    cuda.POOL = pool
    try:
        for _ in range(10):
            timing = pool.take(0)
            waiting.add(record, timing, gpu.append, batched=False, event=False)
            waiting.drain(block=False)
    finally:
        cuda.POOL = old
    assert pool.created == 2  # one pair, given back after each read
    assert gpu == [2.0] * 10
    assert len(waiting) == 0


@pytest.mark.parametrize(
    "error",
    [None, 'KeyError: "quoted" \\ and ünïcode'],
)
def test_the_templated_call_line_is_the_rendered_event(error: str | None) -> None:
    import contextvars

    from gradguard._telemetry._render import call_fields, call_line, render_line, with_context

    record = _telemetry.CallRecord(
        "app:predict \"x\"", "function", False, True, error, 123_456, 1_700_000_000.25,
        "cuda:0", "allocator", 10, 20, 30, 2, 7, "Thread-1 ✓", 1, 4, True, 3,
        contextvars.copy_context(), 0.5,
    )  # fmt: skip
    fast = call_line(record, 42, "host-1")
    slow = render_line(
        with_context(record.context, "gradguard.call", call_fields(record, 42, "host-1"))
    )
    assert fast.endswith(b"\n")
    assert list(json.loads(fast).items()) == list(json.loads(slow).items())


def test_the_cuda_path_of_a_call_reuses_pooled_events_on_fakes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recorder's CUDA branch, driven on the CPU: a fake device, stream and events."""
    from gradguard._memory import Probe
    from gradguard._telemetry import _cuda, _measure

    pool = _cuda.EventPool(new=_FakeEvent)
    monkeypatch.setattr(_cuda, "POOL", pool)
    monkeypatch.setattr(_measure, "POOL", pool)
    monkeypatch.setattr(_measure, "device_of", lambda *_: torch.device("cuda", 0))
    monkeypatch.setattr(_measure, "probe_for", lambda *_: Probe())
    monkeypatch.setattr(torch.cuda, "current_stream", lambda index=None: ("stream", index))
    target = gradguard.infer(name="on a fake gpu")(lambda: None)
    with capture_events() as events:
        for _ in range(5):
            target()
    assert [e["gpu_ms"] for e in events] == [2.0] * 5
    assert [e["device"] for e in events] == ["cuda:0"] * 5
    assert pool.created == 2  # each pair is given back once read, and timed the next call
    (stats,) = [s for s in gradguard.stats() if s["key"] == "on a fake gpu"]
    assert stats["gpu_ms"]["count"] == 5
    assert stats["devices"] == ["cuda:0"]
