"""Exporters: the Prometheus collector's real exposition and OpenTelemetry's API."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import gradguard

# --- Prometheus -------------------------------------------------------------------------


def _samples(registry: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return out


def test_prometheus_exposition_parses_and_counts_right() -> None:
    prometheus_client = pytest.importorskip(
        "prometheus_client", reason="the collector is for prometheus_client"
    )
    registry = prometheus_client.CollectorRegistry()
    registry.register(gradguard.prometheus_collector())

    @gradguard.infer(name="served")
    def served(fail: bool) -> torch.Tensor:
        if fail:
            raise ValueError("bad input")
        return torch.ones(2) * 2

    for _ in range(9):
        served(False)
    for _ in range(2):
        with pytest.raises(ValueError):
            served(True)
    samples = _samples(registry)
    ok = ("gradguard_calls_total", (("mode", "inference"), ("status", "ok"), ("target", "served")))
    err = (
        "gradguard_calls_total",
        (("mode", "inference"), ("status", "error"), ("target", "served")),
    )
    assert samples[ok] == 9
    assert samples[err] == 2
    target = (("target", "served"),)
    assert samples["gradguard_call_duration_seconds_count", target] == 11
    inf = ("gradguard_call_duration_seconds_bucket", (("le", "+Inf"), ("target", "served")))
    assert samples[inf] == 11
    assert 0 < samples["gradguard_call_duration_seconds_sum", target] < 11 * 1.0
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "gradguard_call_duration_seconds_bucket"
    )
    assert [v for _, v in buckets] == sorted(v for _, v in buckets)  # cumulative
    assert samples["gradguard_leaks_total", target] == 0
    assert samples["gradguard_fallbacks_total", target] == 0
    assert samples["gradguard_events_dropped_total", ()] == 0
    assert not any("pid" in dict(labels) for _, labels in samples)


def test_prometheus_collector_without_the_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"gradguard\[prometheus\]"):
        gradguard.prometheus_collector()


# --- OpenTelemetry ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def otel() -> Iterator[tuple[Any, Any]]:
    """The SDK's in-memory reader and span exporter, set as the global providers once."""
    pytest.importorskip("opentelemetry.sdk", reason="tests read OTel through its SDK")
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield reader, exporter


def _duration_points(reader: Any) -> list[Any]:
    data = reader.get_metrics_data()
    points = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "gradguard.call.duration":
                    assert metric.unit == "s"
                    points += metric.data.data_points
    return points


def test_otel_histogram_sees_every_call(otel: tuple[Any, Any]) -> None:
    reader, _ = otel
    gradguard.configure(otel=True)

    @gradguard.infer(name="otel.target")
    def work(fail: bool) -> None:
        if fail:
            raise KeyError("k")

    for _ in range(5):
        work(False)
    with pytest.raises(KeyError):
        work(True)
    points = {
        tuple(sorted(p.attributes.items())): p
        for p in _duration_points(reader)
        if p.attributes.get("gradguard.target") == "otel.target"
    }
    ok = (("gradguard.mode", "inference"), ("gradguard.target", "otel.target"))
    failed = (("error.type", "KeyError"), *ok)
    assert points[ok].count == 5
    assert points[tuple(sorted(failed))].count == 1
    assert points[ok].explicit_bounds[0] == pytest.approx(0.00005)


def test_otel_span_per_call_is_a_child_of_the_calling_threads_span(
    otel: tuple[Any, Any],
) -> None:
    from opentelemetry import trace

    _, exporter = otel
    exporter.clear()
    gradguard.configure(trace=True, log_file=None)

    @gradguard.infer(name="traced")
    def traced(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @gradguard.infer(name="traced.gen")
    def chunks() -> Iterator[int]:
        yield 1
        yield 2

    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("request") as parent:
        traced(torch.ones(1))
        generator = chunks()
        next(generator)
    # The generator finishes on another thread: its span keeps the parent of its start.
    finisher = threading.Thread(target=lambda: list(generator))
    finisher.start()
    finisher.join()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    for name in ("traced", "traced.gen"):
        span = spans[name]
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes["gradguard.target"] == name
        assert span.attributes["gradguard.status"] == "ok"


def test_otel_option_without_the_package_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gradguard._telemetry import _otel

    monkeypatch.setattr(_otel, "available", lambda: False)
    with pytest.raises(ValueError, match=r"gradguard\[otel\]"):
        gradguard.configure(otel=True)


def test_trace_target_option_overrides_the_setting(otel: tuple[Any, Any]) -> None:
    _, exporter = otel
    exporter.clear()
    gradguard.configure(trace=False)
    gradguard.infer(name="traced.alone", trace=True)(lambda: None)()
    gradguard.infer(name="not.traced")(lambda: None)()
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["traced.alone"]
    with pytest.raises(TypeError, match="trace must be True or False"):
        gradguard.infer(trace="yes")
