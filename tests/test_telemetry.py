"""Telemetry: one schema-valid structlog event per call, cheap, and never in the way."""

from __future__ import annotations

import asyncio
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import torch
from torch import nn

import gradguard
from gradguard.testing import capture_events, event_schema

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the event schema")
VALIDATOR = jsonschema.Draft202012Validator(event_schema())


def valid(event: dict[str, Any]) -> dict[str, Any]:
    """Assert ``event`` matches the shipped schema and return it."""
    errors = [e.message for e in VALIDATOR.iter_errors(event)]
    assert not errors, (errors, event)
    return event


def read_lines(path: Path) -> list[dict[str, Any]]:
    gradguard.flush()  # events are written in batches off the call path
    return [json.loads(line) for line in path.read_text().splitlines()]


@gradguard.infer
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x)


# --- the event ----------------------------------------------------------------------------


def test_every_kind_of_call_emits_one_schema_valid_event() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1)).train()
    x = torch.ones(2, 4)

    @gradguard.infer
    def stream(n: int) -> Iterator[int]:
        yield from range(n)

    @gradguard.infer
    async def coro(m: nn.Module) -> torch.Tensor:
        await asyncio.sleep(0)
        return m(x)

    with capture_events() as events:
        predict(model, x)
        gradguard.guard(model)(x)
        with gradguard.scope(model):
            model(x)
        list(stream(3))
        asyncio.run(coro(model))
    assert [e["kind"] for e in events] == ["function", "module", "scope", "function", "function"]
    for event in events:
        valid(event)
        assert event["event"] == "gradguard.call"
        assert event["mode"] == "inference" and event["status"] == "ok"
        assert event["device"] in ("cpu", None)
        assert event["pid"] == os.getpid() and event["thread"] == "MainThread"
        assert event["rank"] is None and event["world_size"] is None
    assert events[0]["target"] == f"{__name__}:predict"
    assert events[0]["eval_switched"] == 3  # the Sequential, its Linear and its Dropout
    assert events[0]["mem_kind"] == "rss"
    # memory="auto" on the CPU reads RSS once, at the call's end: after, not before.
    assert isinstance(events[0]["mem_after_bytes"], int) and events[0]["mem_after_bytes"] > 0
    assert events[0]["mem_before_bytes"] is None and events[0]["mem_peak_bytes"] is None
    assert events[1]["target"] == "torch.nn.modules.container:Sequential"
    assert events[2]["device"] == "cpu"  # from the scope's module parameters


def test_call_counter_and_name_option() -> None:
    named = gradguard.infer(name="ranker.v2")(lambda: None)
    with capture_events() as events:
        for _ in range(3):
            named()
    assert [e["call"] for e in events] == [1, 2, 3]
    assert {e["target"] for e in events} == {"ranker.v2"}


def test_failed_call_is_an_error_event_and_the_error_propagates() -> None:
    @gradguard.infer
    def broken() -> None:
        raise ValueError("bad batch")

    with capture_events() as events, pytest.raises(ValueError, match="bad batch"):
        broken()
    event = valid(events[0])
    assert (event["status"], event["level"], event["error"]) == (
        "error",
        "error",
        "ValueError: bad batch",
    )


def test_fallback_call_reports_fallback_and_the_mode_it_ran_in() -> None:
    @gradguard.infer
    def needs_grad(x: torch.Tensor) -> torch.Tensor:
        return helper(x)

    def helper(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            w = torch.ones(2, requires_grad=True)
            (w * x).sum().backward()
        assert w.grad is not None
        return w.grad

    with capture_events() as events, pytest.warns(gradguard.FallbackWarning):
        needs_grad(torch.ones(2))
        needs_grad(torch.ones(2))
    assert [(e["mode"], e["fallback"]) for e in events] == [("no_grad", True), ("no_grad", False)]


def test_grad_recorded_and_training_modules_flag_unguarded_behaviour() -> None:
    model = nn.Linear(2, 2).train()

    @gradguard.infer(mode="no_grad", eval=False)
    def leaky(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            return m(x)

    with capture_events() as events:
        leaky(model, torch.ones(1, 2))
        predict(model, torch.ones(1, 2))
    assert (events[0]["grad_recorded"], events[0]["training_modules"]) == (True, 1)
    assert (events[1]["grad_recorded"], events[1]["training_modules"]) == (False, 0)


def test_memory_tensors_counts_exactly_what_the_call_keeps() -> None:
    @gradguard.infer(memory="tensors")
    def make() -> torch.Tensor:
        scratch = torch.ones(1000)  # 4000 bytes, freed before the call ends
        return torch.ones(250) + scratch[:250]  # 1000 bytes kept

    with capture_events() as events:
        out = make()
    event = valid(events[0])
    assert event["mem_kind"] == "tensors"
    assert event["mem_before_bytes"] == 0
    assert event["mem_after_bytes"] == out.untyped_storage().nbytes() == 1000
    assert event["mem_peak_bytes"] >= 5000


def test_memory_off() -> None:
    with capture_events() as events:
        gradguard.infer(memory=False)(lambda: None)()
    assert valid(events[0])["mem_kind"] is None
    assert events[0]["mem_before_bytes"] is None


def test_memory_peak_on_cpu_reports_a_peak() -> None:
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("peak RSS needs Linux /proc/self/clear_refs")

    @gradguard.infer(memory="peak")
    def spike() -> int:
        big = torch.ones(20_000_000)  # 80 MB, freed before returning
        return int(big[0])

    with capture_events() as events:
        spike()
    event = valid(events[0])
    assert event["mem_peak_bytes"] >= event["mem_before_bytes"] + 50_000_000


def test_application_contextvars_appear_in_events(tmp_path: Path) -> None:
    with structlog.contextvars.bound_contextvars(request_id="r-42"), capture_events() as events:
        predict(nn.Linear(1, 1), torch.ones(1, 1))
    assert events[0]["request_id"] == "r-42"
    gradguard.configure(log_file=str(tmp_path / "calls.jsonl"))
    with structlog.contextvars.bound_contextvars(request_id="r-43"):
        predict(nn.Linear(1, 1), torch.ones(1, 1))
    assert read_lines(tmp_path / "calls.jsonl")[0]["request_id"] == "r-43"


# --- logging like a library -------------------------------------------------------------


def test_zero_config_prints_nothing_and_configures_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    structlog.reset_defaults()
    predict(nn.Linear(1, 1), torch.ones(1, 1))
    gradguard.flush()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert not structlog.is_configured()
    assert [s["calls"] for s in gradguard.stats() if s["key"] == f"{__name__}:predict"] == [1]


def test_console_switch_prints_a_readable_line(capsys: pytest.CaptureFixture[str]) -> None:
    structlog.reset_defaults()
    gradguard.configure(console=True)
    predict(nn.Linear(1, 1), torch.ones(1, 1))
    gradguard.flush()
    err = capsys.readouterr().err
    assert "gradguard.call" in err and f"target={__name__}:predict" in err
    assert "mode=inference" in err
    assert not structlog.is_configured()


def test_application_structlog_configuration_applies_unchanged() -> None:
    with structlog.testing.capture_logs() as logs:
        predict(nn.Linear(1, 1), torch.ones(1, 1))
    assert logs[0]["event"] == "gradguard.call"
    assert logs[0]["log_level"] == "info"


def test_log_file_writes_one_schema_valid_json_line_per_call(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "calls-{pid}.jsonl"
    gradguard.configure(log_file=str(path))
    model = nn.Linear(3, 3)
    for _ in range(4):
        predict(model, torch.ones(1, 3))
    lines = read_lines(Path(str(path).format(pid=os.getpid())))
    assert len(lines) == 4
    for line in lines:
        valid(line)
    assert [line["call"] for line in lines][-4:] == sorted(line["call"] for line in lines)[-4:]


def test_environment_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gradguard import _config

    monkeypatch.setenv("GRADGUARD_LOG_FILE", str(tmp_path / "env.jsonl"))
    monkeypatch.setenv("GRADGUARD_SAMPLE", "1")
    _config.reset()
    predict(nn.Linear(1, 1), torch.ones(1, 1))
    assert len(read_lines(tmp_path / "env.jsonl")) == 1
    monkeypatch.setenv("GRADGUARD_ENABLED", "0")
    _config.reset()
    predict(nn.Linear(1, 1), torch.ones(1, 1))
    assert len(read_lines(tmp_path / "env.jsonl")) == 1
    monkeypatch.setenv("GRADGUARD_ENABLED", "1")
    monkeypatch.setenv("GRADGUARD_SAMPLE", "lots")
    _config.reset()
    # A bad variable must not break inference: it is reported once and ignored.
    with pytest.warns(gradguard.TelemetryWarning, match="GRADGUARD_SAMPLE must be a fraction"):
        out = predict(nn.Linear(1, 1), torch.ones(1, 1))
    assert out.shape == (1, 1)
    assert _config.current().sample == 1.0
    assert len(read_lines(tmp_path / "env.jsonl")) == 2


def test_disabled_and_level() -> None:
    @gradguard.infer
    def sometimes(fail: bool) -> None:
        if fail:
            raise KeyError("x")

    gradguard.configure(enabled=False)
    with capture_events() as events:
        sometimes(False)
    assert events == []
    gradguard.configure(enabled=True, level="error")
    with capture_events() as events, pytest.raises(KeyError):
        sometimes(False)
        sometimes(True)
    assert gradguard.describe(sometimes).calls == 3


def test_level_error_keeps_only_failed_calls(tmp_path: Path) -> None:
    gradguard.configure(log_file=str(tmp_path / "e.jsonl"), level="error")
    failing = gradguard.infer(lambda fail: 1 / 0 if fail else None)
    failing(False)
    with pytest.raises(ZeroDivisionError):
        failing(True)
    assert [line["status"] for line in read_lines(tmp_path / "e.jsonl")] == ["error"]


def test_per_target_options_override_global_ones() -> None:
    gradguard.configure(enabled=False)
    loud = gradguard.infer(log=True)(lambda: None)
    quiet = gradguard.infer(log=False)(lambda: None)
    gradguard.configure(enabled=True)
    with capture_events() as events:
        loud()
        quiet()
    assert len(events) == 1


def test_sampling_counts_every_call_and_is_deterministic_when_seeded() -> None:
    def run() -> list[int]:
        gradguard.configure(sample=0.3, seed=7)
        target = gradguard.infer(name="sampled")(lambda: None)
        with capture_events() as events:
            for _ in range(200):
                target()
        assert gradguard.describe(target).calls == 200
        return [e["call"] for e in events]

    first, second = run(), run()
    assert first == second
    assert 30 < len(first) < 90
    never = gradguard.infer(sample=0.0)(lambda: None)
    with capture_events() as events:
        never()
    assert events == []


def test_bad_configure_input() -> None:
    with pytest.raises(TypeError, match="unknown option 'logfile'"):
        gradguard.configure(logfile="x")
    with pytest.raises(ValueError, match="sample must be a fraction"):
        gradguard.configure(sample=2)
    with pytest.raises(ValueError, match="level must be one of"):
        gradguard.configure(level="loud")
    with pytest.raises(ValueError, match="sample must be a fraction"):
        gradguard.infer(sample=-1)
    with pytest.raises(ValueError, match="memory must be one of"):
        gradguard.infer(memory="gpu")


# --- logging never breaks inference ------------------------------------------------------


def _calls_survive(n: int = 3) -> list[warnings.WarningMessage]:
    model = nn.Linear(2, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(n):
            out = predict(model, torch.ones(1, 2))
            assert out.shape == (1, 2)
        gradguard.flush()  # a file's batch is written here
    return [w for w in caught if issubclass(w.category, gradguard.TelemetryWarning)]


def test_a_processor_that_raises_warns_once() -> None:
    def explode(logger: Any, name: str, event: Any) -> Any:
        raise RuntimeError("processor bug")

    structlog.configure(processors=[explode])
    try:
        caught = _calls_survive()
    finally:
        structlog.reset_defaults()
    assert len(caught) == 1
    assert "processor bug" in str(caught[0].message)
    assert caught[0].filename == __file__


def test_a_renderer_that_fails_warns_once() -> None:
    structlog.configure(
        processors=[structlog.processors.JSONRenderer(serializer=lambda *a, **k: 1 / 0)]
    )
    try:
        caught = _calls_survive()
    finally:
        structlog.reset_defaults()
    assert len(caught) == 1


def test_a_closed_log_file_warns_once(tmp_path: Path) -> None:
    from gradguard import _telemetry

    gradguard.configure(log_file=str(tmp_path / "c.jsonl"))
    predict(nn.Linear(2, 2), torch.ones(1, 2))
    gradguard.flush()
    sink = _telemetry.PIPELINE._sinks[None]
    assert isinstance(sink, _telemetry._sinks.FileSink)
    sink.file.close()
    caught = _calls_survive()
    assert len(caught) == 1
    assert "closed file" in str(caught[0].message)


def test_a_full_disk_warns_once() -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full to simulate a full disk")
    gradguard.configure(log_file="/dev/full")
    caught = _calls_survive()
    assert len(caught) == 1
    assert "No space left" in str(caught[0].message)


# --- processes ----------------------------------------------------------------------------


class _GuardedDataset(torch.utils.data.Dataset[torch.Tensor]):
    def __init__(self) -> None:
        self.model = nn.Linear(2, 2)

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        return predict(self.model, torch.ones(1, 2)).clone()


def test_dataloader_workers_write_their_own_files(tmp_path: Path) -> None:
    gradguard.configure(log_file=str(tmp_path / "w-{pid}.jsonl"))
    loader = torch.utils.data.DataLoader(_GuardedDataset(), num_workers=2, batch_size=2)
    assert len(list(loader)) == 4
    files = sorted(tmp_path.glob("w-*.jsonl"))
    assert len(files) == 2  # one per worker process
    pids = {read_lines(f)[0]["pid"] for f in files}
    assert os.getpid() not in pids
    assert sum(len(read_lines(f)) for f in files) == 8


# CUDA paths (device time, the allocator's figures) are tested in test_cuda.py.


def test_the_event_names_the_device_the_call_computes_on() -> None:
    """Inputs on an accelerator decide; else the models' device, unless it is ``meta``
    (an offloaded model computes where its inputs are). On the CPU only the host
    devices can be shown: tests/test_cuda.py has the GPU cases."""
    model = nn.Linear(2, 2, device="meta")  # no data: the call does not run it

    @gradguard.infer
    def describe(m: nn.Module, x: torch.Tensor | None = None) -> torch.Tensor | None:
        return x

    buffers_only = nn.Sequential(nn.ReLU(), nn.BatchNorm1d(2, affine=False, device="meta"))
    with capture_events() as events:
        describe(model)
        describe(buffers_only)
        describe(model, torch.ones(2))  # offloaded to meta: where the input is
        predict(nn.Linear(2, 2), torch.ones(1, 2))
        describe(nn.ReLU())
    assert [e["device"] for e in events] == ["meta", "meta", "cpu", "cpu", None]


class _FakeEnd:
    """A CUDA end event stand-in: done or not, counting how often it was asked."""

    def __init__(self, done: bool) -> None:
        self.done = done
        self.queries = 0

    def query(self) -> bool:
        self.queries += 1
        return self.done

    def synchronize(self) -> None:
        self.done = True


class _FakeStart:
    def elapsed_time(self, end: _FakeEnd) -> float:
        return 1.5


def test_waiting_device_times_leave_in_call_order_asking_one_pending_event() -> None:
    """However far the host runs ahead, a call asks the device about one waiting event."""
    from gradguard import _telemetry

    ends = [_FakeEnd(done) for done in (True, True, False, True, False)]
    for number, end in enumerate(ends, 1):
        timing = _telemetry.Timing(_FakeStart(), end, 0)
        _telemetry.WAITING.add(_record(number), timing, None, batched=False, event=True)
    with capture_events() as events:
        gradguard.infer(name="on the cpu")(lambda: None)()  # drains at its end, then logs
        drained = [e["call"] for e in events]
        waiting = len(_telemetry.WAITING)
    assert drained == [1, 2, 1]  # stopped at call 3, still running; 4 waits behind it
    assert events[2]["target"] == "on the cpu"
    assert [end.queries for end in ends] == [1, 1, 1, 0, 0]
    assert waiting == 3
    assert not _telemetry.WAITING  # the block's end flushed the rest, in call order
    assert [e["call"] for e in events] == [1, 2, 1, 3, 4, 5]
    assert [e["gpu_ms"] for e in events] == [1.5, 1.5, None, 1.5, 1.5, 1.5]


def _record(call: int) -> Any:
    """A call's raw figures, as a call on a CUDA device would hand them off."""
    import contextvars

    from gradguard import _telemetry

    return _telemetry.CallRecord(
        "on the gpu", "function", True, False, None, 1000, 0.0, "cuda:0", None, None, None,
        None, 0, call, "MainThread", None, None, False, 0, contextvars.copy_context(),
    )  # fmt: skip


class _BrokenEnd:
    """A CUDA end event on a device in error: every question raises."""

    def query(self) -> bool:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    synchronize = query


def test_a_device_error_loses_no_event() -> None:
    from gradguard import _telemetry

    timing = _telemetry.Timing(_FakeStart(), _BrokenEnd(), 0)
    _telemetry.WAITING.add(_record(1), timing, None, batched=False, event=True)
    with (
        capture_events() as events,
        pytest.warns(gradguard.TelemetryWarning, match="illegal.*CUDA_LAUNCH_BLOCKING=1"),
    ):
        gradguard.infer(name="on the cpu")(lambda: None)()
    assert [(e["call"], e["gpu_ms"]) for e in events] == [(1, None), (1, None)]
    assert events[1]["target"] == "on the cpu"
    assert not _telemetry.WAITING


def test_events_waiting_when_configure_swaps_the_file_land_in_the_old_one(
    tmp_path: Path,
) -> None:
    from gradguard import _telemetry

    gradguard.configure(log_file=str(tmp_path / "a.jsonl"))
    predict(nn.Linear(1, 1), torch.ones(1, 1))  # waits in the batch...
    assert len(_telemetry.PIPELINE.queue) == 1
    gradguard.configure(log_file=str(tmp_path / "b.jsonl"))  # ...written to a.jsonl here
    predict(nn.Linear(1, 1), torch.ones(1, 1))
    assert len(read_lines(tmp_path / "a.jsonl")) == 1
    assert len(read_lines(tmp_path / "b.jsonl")) == 1


def _rank_worker(rank: int, init_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        predict(nn.Linear(2, 2), torch.ones(1, 2))
    finally:
        dist.destroy_process_group()


def _spawn_two_ranks(worker: Any, tmp_path: Path) -> None:
    """Run ``worker`` on two gloo ranks, again from scratch if gloo aborted a rank at exit.

    Gloo's worker threads sometimes abort a process as its interpreter shuts down, after
    its work is done (plain torch does it too); any other failure fails the test.
    """
    for attempt in range(3):
        for stale in tmp_path.glob("rank*.jsonl"):
            stale.unlink()
        init = tmp_path / f"init-{attempt}"
        try:
            torch.multiprocessing.spawn(worker, args=(str(init),), nprocs=2)
            return
        except torch.multiprocessing.ProcessExitedException as error:
            if error.signal_name != "SIGABRT" or attempt == 2:
                raise


def _early_rank_worker(rank: int, init_file: str) -> None:
    import torch.distributed as dist

    predict(nn.Linear(2, 2), torch.ones(1, 2))  # before the group: the rank is not known
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        predict(nn.Linear(2, 2), torch.ones(1, 2))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_rank_that_logs_before_the_group_is_up_moves_to_its_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRADGUARD_LOG_FILE", str(tmp_path / "rank{rank}.jsonl"))
    monkeypatch.delenv("RANK", raising=False)
    _spawn_two_ranks(_early_rank_worker, tmp_path)
    first = read_lines(tmp_path / "rank0.jsonl")
    ranks = [(e["rank"], e["world_size"]) for e in first]
    assert ranks.count((None, None)) == 2 and ranks.count((0, 2)) == 1 and len(ranks) == 3
    (later,) = read_lines(tmp_path / "rank1.jsonl")
    assert (later["rank"], later["world_size"]) == (1, 2)


def test_ranks_tag_their_events_and_write_their_own_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spawned processes (torchrun's, torch.multiprocessing's) read the environment.
    monkeypatch.setenv("GRADGUARD_LOG_FILE", str(tmp_path / "rank{rank}.jsonl"))
    _spawn_two_ranks(_rank_worker, tmp_path)
    for rank in (0, 1):
        (event,) = read_lines(tmp_path / f"rank{rank}.jsonl")
        assert (valid(event)["rank"], event["world_size"]) == (rank, 2)


def test_memory_tensors_on_a_generator_counts_only_its_own_steps() -> None:
    @gradguard.infer(memory="tensors")
    def chunks() -> Iterator[torch.Tensor]:
        for _ in range(2):
            yield torch.ones(100)  # 400 bytes, each kept by the consumer

    kept = []
    with capture_events() as events:
        for chunk in chunks():
            kept.append(chunk)
            kept.append(torch.ones(1_000_000))  # the consumer's own 4 MB: not the call's
    event = valid(events[0])
    assert event["mem_after_bytes"] == 800
    assert event["mem_peak_bytes"] == 800


def test_threads_calling_one_target_get_distinct_call_numbers() -> None:
    import threading

    target = gradguard.infer(name="threaded")(lambda: None)
    with capture_events() as events:
        threads = [
            threading.Thread(target=lambda: [target() for _ in range(200)]) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(e["call"] for e in events) == list(range(1, 801))


def test_context_values_with_keys_json_cannot_write_still_log(tmp_path: Path) -> None:
    gradguard.configure(log_file=str(tmp_path / "k.jsonl"))
    with structlog.contextvars.bound_contextvars(routing={("a", 1): "x"}):
        predict(nn.Linear(1, 1), torch.ones(1, 1))
        predict(nn.Linear(1, 1), torch.ones(1, 1))
    lines = read_lines(tmp_path / "k.jsonl")
    assert len(lines) == 2
    assert lines[0]["routing"] == {"('a', 1)": "x"}


def test_timestamps_are_iso_utc_on_either_side_of_the_epoch() -> None:
    from gradguard._telemetry import _timestamp

    assert _timestamp(0.25) == "1970-01-01T00:00:00.250000Z"
    assert _timestamp(-1.5) == "1969-12-31T23:59:58.500000Z"
