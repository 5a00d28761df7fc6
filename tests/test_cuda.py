"""CUDA paths: device time from CUDA events, the caching allocator's figures, guarded models
on the GPU. Every test here is marked ``cuda`` and skips where torch sees no CUDA device.

A call is measured on the device of its models, else of its first tensor argument: the
functions below take a tensor where they only allocate, as real code takes its inputs.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import torch
from torch import nn

import gradguard
from gradguard import _telemetry
from gradguard._demo import main as demo
from gradguard.testing import capture_events, event_schema

pytestmark = pytest.mark.cuda

MB = 1024**2


def valid(event: dict[str, Any]) -> dict[str, Any]:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the event schema")
    errors = [e.message for e in jsonschema.Draft202012Validator(event_schema()).iter_errors(event)]
    assert not errors, (errors, event)
    return event


@pytest.fixture
def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 512), nn.BatchNorm1d(512), nn.Dropout(0.5)).cuda()


@gradguard.infer
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x.to("cuda", non_blocking=True))


def test_guarded_gpu_model_gives_the_eval_result_and_restores_its_flags(model: nn.Module) -> None:
    x = torch.randn(64, 256, device="cuda")
    model.eval()
    with torch.inference_mode():
        expected = model(x)
    model.train()
    with capture_events() as events:
        out = gradguard.guard(model)(x)
    assert torch.equal(out, expected)
    assert out.is_cuda and out.is_inference()
    assert model.training and all(m.training for m in model.modules())
    (event,) = events
    assert valid(event)["device"] == "cuda:0"
    assert event["mem_kind"] == "allocator"
    assert event["gpu_ms"] is not None and event["gpu_ms"] > 0


def test_cuda_event_gets_device_time_later_or_at_once_with_sync() -> None:
    model = nn.Linear(256, 256).cuda()
    x = torch.ones(64, 256, device="cuda")
    with capture_events() as events:
        predict(model, x)
        gradguard.infer(sync=True)(lambda m, t: m(t))(model, x)
    assert len(events) == 2
    for event in events:
        valid(event)
        assert event["device"] == "cuda:0"
        assert event["mem_kind"] == "allocator"
        assert event["gpu_ms"] is not None and event["gpu_ms"] >= 0


def test_device_time_waits_without_blocking_and_keeps_its_request_context() -> None:
    """An event waits for its end event, then leaves with the context of its own call."""
    model = nn.Linear(2048, 2048).cuda()
    x = torch.randn(2048, 2048, device="cuda")

    @gradguard.infer(name="slow")
    def slow(m: nn.Module, y: torch.Tensor) -> torch.Tensor:
        for _ in range(50):  # long enough that the device is still busy at the call's end
            y = m(y)
        return y

    with capture_events() as events:
        with structlog.contextvars.bound_contextvars(request_id="r-1"):
            slow(model, x)
            waiting = len(_telemetry.WAITING)
        with structlog.contextvars.bound_contextvars(request_id="r-2"):
            torch.cuda.synchronize()
            predict(nn.Linear(2, 2).cuda(), torch.ones(1, 2, device="cuda"))  # drains
        before_flush = [e["request_id"] for e in events]
        gradguard.flush()
    assert waiting == 1  # the call returned before its device time was known
    assert "r-1" in before_flush  # emitted at the next call, once its end event was done
    assert sorted(e["request_id"] for e in events) == ["r-1", "r-2"]
    slow_event = next(e for e in events if e["target"] == "slow")
    assert slow_event["request_id"] == "r-1"
    assert slow_event["gpu_ms"] > 0


def test_cpu_batch_moved_inside_is_measured_on_the_model_device(model: nn.Module) -> None:
    with capture_events() as events:
        out = predict(model, torch.randn(8, 256))  # a CPU batch; the model is on the GPU
    assert out.is_cuda
    (event,) = events
    assert event["device"] == "cuda:0"
    assert event["mem_kind"] == "allocator"


def test_a_model_offloaded_to_the_cpu_is_measured_where_its_inputs_are() -> None:
    @gradguard.infer
    def offloaded(m: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        # Its parameters rest on the CPU and come to the GPU per call, as accelerate's
        # offloading moves them.
        return nn.functional.linear(x, m.weight.to(x.device), m.bias.to(x.device))

    with capture_events() as events:
        offloaded(nn.Linear(4, 4), torch.ones(2, 4, device="cuda"))
    (event,) = events
    assert (event["device"], event["mem_kind"]) == ("cuda:0", "allocator")


def test_allocator_figures_are_the_call_s_and_leave_the_users_peak_alone() -> None:
    """``memory="auto"`` reads the allocator and never resets its peak counter."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    big = torch.empty(256 * MB, dtype=torch.uint8, device="cuda")  # the user's own peak
    del big
    users_peak = torch.cuda.max_memory_allocated()

    @gradguard.infer(name="keeps")
    def keeps(like: torch.Tensor) -> torch.Tensor:
        return torch.ones(4 * MB, dtype=like.dtype, device=like.device)

    like = torch.zeros(1, dtype=torch.uint8, device="cuda")
    with capture_events() as events:
        kept = keeps(like)
    event = valid(events[0])
    assert event["mem_after_bytes"] - event["mem_before_bytes"] >= 4 * MB
    assert event["mem_peak_bytes"] is None  # below the process's peak: unknown, not made up
    assert torch.cuda.max_memory_allocated() == users_peak
    assert event["mem_after_bytes"] == torch.cuda.memory_allocated()  # the counter torch reads
    del kept


def test_memory_peak_resets_the_counter_for_an_exact_peak_as_documented() -> None:
    @gradguard.infer(memory="peak", name="temporary")
    def temporary(like: torch.Tensor) -> int:
        scratch = torch.ones(64 * MB, dtype=like.dtype, device=like.device)
        return int(scratch[0])

    torch.cuda.synchronize()
    with capture_events() as events:
        assert temporary(torch.zeros(1, dtype=torch.uint8, device="cuda")) == 1
    event = valid(events[0])
    assert event["mem_peak_bytes"] >= event["mem_before_bytes"] + 64 * MB
    assert event["mem_after_bytes"] < event["mem_before_bytes"] + 64 * MB


def test_memory_tensors_counts_cuda_tensors_exactly() -> None:
    @gradguard.infer(memory="tensors", name="exact")
    def exact(device: torch.Tensor) -> torch.Tensor:
        scratch = torch.ones(1000, device=device.device)  # 4,000 bytes, freed
        return scratch[:250].clone()  # 1,000 bytes, kept

    with capture_events() as events:
        kept = exact(torch.empty(0, device="cuda"))
    event = valid(events[0])
    assert (event["mem_after_bytes"], event["mem_peak_bytes"]) == (1000, 5000)
    assert event["device"] == "cuda:0"
    del kept


def test_generator_on_the_gpu_logs_one_event_with_device_time(model: nn.Module) -> None:
    @gradguard.infer
    def batches(m: nn.Module) -> Iterator[torch.Tensor]:
        for _ in range(3):
            yield m(torch.randn(16, 256, device="cuda"))

    model.train()
    with capture_events() as events:
        outs = list(batches(model))
    assert all(o.is_inference() for o in outs)
    assert model.training
    (event,) = events
    assert event["gpu_ms"] is not None and event["gpu_ms"] > 0


def test_a_side_stream_is_timed_on_that_stream(model: nn.Module) -> None:
    stream = torch.cuda.Stream()
    x = torch.randn(64, 256, device="cuda")
    torch.cuda.synchronize()
    with capture_events() as events, torch.cuda.stream(stream):
        out = predict(model, x)
    stream.synchronize()
    assert out.is_inference()
    assert events[0]["gpu_ms"] is not None and events[0]["gpu_ms"] > 0


def test_gpu_teacher_logits_in_a_training_step_warn_with_the_teacher_name() -> None:
    teacher = gradguard.guard(nn.Linear(8, 8).cuda(), name="gpu-teacher")
    student = nn.Linear(8, 8).cuda()
    x = torch.randn(4, 8, device="cuda")
    soft = teacher(x)
    with (
        pytest.warns(gradguard.LeakWarning, match="gpu-teacher"),
        pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"),
    ):
        student(soft)  # gradguard's warning first, naming the teacher; then torch's error


def test_the_log_file_holds_device_time_after_flush(tmp_path: Path) -> None:
    gradguard.configure(log_file=str(tmp_path / "gpu.jsonl"))
    predict(nn.Linear(64, 64).cuda(), torch.ones(8, 64, device="cuda"))
    gradguard.flush()
    (line,) = (tmp_path / "gpu.jsonl").read_text().splitlines()
    event = valid(json.loads(line))
    assert event["gpu_ms"] is not None and event["device"] == "cuda:0"


def test_demo_refuses_a_gpu_this_machine_does_not_have(
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(SystemExit) as info:
        demo(["--device", missing])
    assert info.value.code == 2
    assert f"--device {missing}: this machine has {torch.cuda.device_count()} CUDA" in (
        capsys.readouterr().err
    )


def test_demo_on_the_gpu_reproduces_the_article_at_a_small_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "demo.jsonl"
    small = ["--in-features", "64", "--hidden", "1024", "--out-features", "16", "--batch", "32"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.TelemetryWarning)
        assert demo([*small, "--repeat", "3", "--device", "cuda", "--log-file", str(log)]) == 0
    out = capsys.readouterr().out
    assert "cuda" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "AddmmBackward0" in next(v for k, v in lines.items() if k == "with")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert events and all(e["device"].startswith("cuda") for e in events)
