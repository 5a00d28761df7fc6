"""The telemetry's fast paths: the aggregate-only call, the templated call line, the
memory probe read once, OpenTelemetry's attribute dicts built once."""

from __future__ import annotations

import _thread
import contextvars
import json
import threading
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import gradguard
from gradguard import _telemetry
from gradguard._telemetry import _measure
from gradguard._telemetry._aggregate import FALLBACK, GRAD, NO_GRAD
from gradguard._telemetry._render import call_line
from gradguard.testing import capture_events


def grad_of_square(x: torch.Tensor) -> torch.Tensor:
    """Autograd work the static look at its callers cannot see (it fails under inference
    mode: ``x`` is an inference tensor)."""
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_()
        (leaf**2).sum().backward()
    assert leaf.grad is not None
    return leaf.grad


def by_key() -> dict[str, dict[str, Any]]:
    return {s["key"]: s for s in gradguard.stats()}


def test_the_aggregate_only_path_counts_errors_modes_fallbacks_and_grad() -> None:
    """Nothing configured: every call takes the aggregate-only path, which keeps the
    outcome as flags from the call's start; each outcome is counted right."""

    @gradguard.infer(name="fallback")
    def falls_back(x: torch.Tensor) -> torch.Tensor:
        return grad_of_square(x)

    @gradguard.infer(name="failing")
    def failing() -> None:
        raise KeyError("no")

    @gradguard.infer(name="grad", mode="no_grad")
    def grad_out() -> torch.Tensor:
        return torch.ones(2, requires_grad=True)

    @gradguard.infer(name="grad_in_list", mode="no_grad")
    def grad_in_list() -> list[torch.Tensor]:
        return [torch.ones(1), torch.ones(2, requires_grad=True)]

    training = nn.Linear(2, 2).train()
    guarded = gradguard.guard(training, eval=False, name="training")

    with pytest.warns(gradguard.FallbackWarning):
        falls_back(torch.ones(3))  # fell back, retried under no_grad
    falls_back(torch.ones(3))  # no_grad from now on, no fallback
    for _ in range(2):
        with pytest.raises(KeyError):
            failing()
    grad_out()
    grad_in_list()
    guarded(torch.ones(1, 2))
    stats = by_key()
    assert stats["fallback"]["calls"] == 2
    assert stats["fallback"]["fallbacks"] == 1
    assert stats["fallback"]["modes"] == {"inference": 0, "no_grad": 2}
    assert stats["failing"]["errors"] == 2 and stats["failing"]["calls"] == 2
    assert stats["failing"]["modes"] == {"inference": 2, "no_grad": 0}
    assert stats["grad"]["grad_calls"] == 1
    assert stats["grad_in_list"]["grad_calls"] == 1
    # A module left in training mode (eval=False) is counted as a grad call.
    assert stats["training"]["grad_calls"] == 1
    for s in stats.values():
        assert s["wall_ms"]["count"] == s["calls"]


def test_the_aggregate_only_path_is_the_same_with_and_without_a_capture() -> None:
    """The same calls counted on the aggregate-only path and on the full-event path
    (a capture open) give the same counts."""

    @gradguard.infer(name="light")
    def light(fail: bool) -> torch.Tensor:
        if fail:
            raise ValueError("x")
        return torch.ones(2, requires_grad=True)

    @gradguard.infer(name="full")
    def full(fail: bool) -> torch.Tensor:
        return light.__wrapped__(fail)  # type: ignore[attr-defined, no-any-return]

    pattern = [False, True, False, False, True]
    for fail in pattern:
        with pytest.raises(ValueError) if fail else _nothing():
            light(fail)
    with capture_events() as events:
        for fail in pattern:
            with pytest.raises(ValueError) if fail else _nothing():
                full(fail)
    assert len(events) == len(pattern)
    stats = by_key()
    for exact in ("calls", "errors", "modes", "fallbacks", "grad_calls"):
        assert stats["light"][exact] == stats["full"][exact], exact


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_measure_flags_stand_for_fallback_retried_and_mode() -> None:
    m = _measure.Measure(1, True, 0)
    assert m.flags == 0 and m.inference and not m.fallback and not m.retried
    m.fallback = True
    m.retried = False  # fell back, raised: still an inference call
    assert m.fallback and not m.retried and m.inference and m.flags == FALLBACK
    m.retried = True  # then run again under no_grad
    assert m.retried and m.inference and m.flags == FALLBACK | NO_GRAD
    started_no_grad = _measure.Measure(2, False, 2)
    assert started_no_grad.flags == NO_GRAD | GRAD
    assert not started_no_grad.inference and not started_no_grad.retried
    full = _measure.FullMeasure(3, True, 1, None, None)
    assert full.training == 1 and full.flags == GRAD and full.switched == 0


def test_rss_is_read_once_at_the_end_unless_the_peak_is_asked_for() -> None:
    @gradguard.infer(name="auto")
    def auto() -> torch.Tensor:
        return torch.ones(8)

    @gradguard.infer(name="peak", memory="peak")
    def peak() -> torch.Tensor:
        return torch.ones(8)

    with capture_events() as events:
        auto()
        peak()
    first, second = events
    assert first["mem_kind"] == "rss" and first["mem_before_bytes"] is None
    assert isinstance(first["mem_after_bytes"], int) and first["mem_after_bytes"] > 0
    assert first["mem_peak_bytes"] is None
    assert isinstance(second["mem_before_bytes"], int) and second["mem_before_bytes"] > 0
    assert isinstance(second["mem_after_bytes"], int)
    assert isinstance(second["mem_peak_bytes"], int)


def _record(**changes: Any) -> _telemetry.CallRecord:
    record = _telemetry.CallRecord(
        "app:100%", "function", True, False, None, 123_456, 1_700_000_000.5,
        "cpu", "rss", None, 2_000, None, 0, 7, "Thread %s %d", None, None, False, 0,
        contextvars.copy_context(), None,
    )  # fmt: skip
    return record._replace(**changes)


@pytest.mark.parametrize("wall_ns", [0, 1, 999, 1_000_000, 123_456_789, 10**12 + 7, 2**53])
def test_the_call_line_writes_wall_ms_as_the_same_float(wall_ns: int) -> None:
    line = json.loads(call_line(_record(wall_ns=wall_ns), 42, "h"))
    assert line["wall_ms"] == wall_ns / 1e6
    assert line["target"] == "app:100%" and line["thread"] == "Thread %s %d"


def test_call_lines_of_one_target_differ_only_in_the_calls_own_figures() -> None:
    ok = json.loads(call_line(_record(), 1, "h"))
    failed = json.loads(call_line(_record(error="KeyError: '%d'", inference=False), 1, "h"))
    grad = json.loads(call_line(_record(grad_recorded=True, fallback=True, gpu_ms=0.25), 1, "h"))
    assert (ok["status"], ok["level"], ok["mode"]) == ("ok", "info", "inference")
    assert "error" not in ok
    assert (failed["status"], failed["level"], failed["mode"]) == ("error", "error", "no_grad")
    assert failed["error"] == "KeyError: '%d'"
    assert grad["grad_recorded"] is True and grad["fallback"] is True
    assert grad["gpu_ms"] == 0.25 and ok["gpu_ms"] is None
    assert ok["mem_after_bytes"] == 2_000 and ok["mem_before_bytes"] is None
    assert ok["timestamp"].endswith(".500000Z")


def test_the_thread_name_is_read_for_threads_threading_did_not_start() -> None:
    assert _measure._thread_name() == threading.current_thread().name
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    def run() -> None:
        seen.append((_measure._thread_name(), threading.current_thread().name))
        done.set()

    _thread.start_new_thread(run, ())
    assert done.wait(10)
    assert seen[0][0] == seen[0][1]


def test_otel_attribute_dicts_are_built_once_per_target_mode_and_error_type() -> None:
    pytest.importorskip("opentelemetry.sdk", reason="the OpenTelemetry SDK is a test extra")
    from gradguard._telemetry._otel import OTEL

    recorded: list[tuple[float, dict[str, str]]] = []

    class Histogram:
        def record(self, value: float, attributes: dict[str, str]) -> None:
            recorded.append((value, attributes))

    OTEL._histogram = Histogram()
    OTEL.record("t", True, 1_000, None)
    OTEL.record("t", True, 2_000, None)
    OTEL.record("t", False, 3_000, KeyError("a"))
    OTEL.record("t", False, 4_000, KeyError("b"))
    OTEL.record("t", False, 5_000, ValueError("c"))
    assert recorded[0][1] is recorded[1][1]
    assert recorded[2][1] is recorded[3][1]
    assert recorded[0][1] == {"gradguard.target": "t", "gradguard.mode": "inference"}
    assert recorded[2][1]["error.type"] == "KeyError"
    assert recorded[4][1]["error.type"] == "ValueError"
    assert recorded[4][1]["gradguard.mode"] == "no_grad"
    assert [v for v, _ in recorded] == [1e-6, 2e-6, 3e-6, 4e-6, 5e-6]


def test_structlog_configured_later_is_seen_by_a_running_target() -> None:
    """Whether structlog is configured is read per call (an attribute, not a call):
    configuring it after a target's first call sends that target's next call there."""
    import structlog

    target = gradguard.infer(name="later")(lambda: None)
    target()
    assert not structlog.is_configured()
    caught: list[dict[str, Any]] = []

    def keep(_: Any, __: str, event: dict[str, Any]) -> Any:
        caught.append(dict(event))
        raise structlog.DropEvent

    structlog.configure(processors=[keep])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            target()
    finally:
        structlog.reset_defaults()
    assert [e["event"] for e in caught] == ["gradguard.call"]
    assert caught[0]["target"] == "later"
