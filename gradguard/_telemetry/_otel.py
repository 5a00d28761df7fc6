"""OpenTelemetry: a duration histogram per call and, with ``trace=True``, a span per call.

Through ``opentelemetry-api`` only (``pip install gradguard[otel]``): gradguard never
configures an SDK, a reader or an exporter. The application's ``MeterProvider`` and
``TracerProvider`` decide where the figures go; without them the API's no-op providers
make every record a cheap no-op.

- Metric ``gradguard.call.duration`` (histogram, unit ``s``, explicit bucket boundaries
  in seconds) with attributes ``gradguard.target``, ``gradguard.mode`` and, on failed
  calls, ``error.type`` (the exception's class name).
- With ``trace=True``: one span per call, named after the target, started on the calling
  thread as a child of the span current there, ended where the call ends (another thread
  for a generator resumed elsewhere), with the event's fields as ``gradguard.*``
  attributes and an error status on failed calls.
"""

from __future__ import annotations

from typing import Any

from ._process import PROCESS
from ._render import CallRecord, call_fields

__all__ = ["DURATION_BOUNDS", "OTEL", "OpenTelemetry", "available"]

# Seconds: 50 µs to 60 s, roughly 2.5 times apart; guarded calls span that whole range.
DURATION_BOUNDS: tuple[float, ...] = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def available() -> bool:
    """Whether ``opentelemetry-api`` can be imported."""
    try:
        import opentelemetry.metrics
        import opentelemetry.trace  # noqa: F401
    except ImportError:
        return False
    return True


class OpenTelemetry:
    """The instruments gradguard records through, made on first use."""

    def __init__(self) -> None:
        self._histogram: Any = None
        self._tracer: Any = None
        self._attributes: dict[tuple[str, bool, type | None], dict[str, str]] = {}

    def reset(self) -> None:
        self._histogram = None
        self._tracer = None
        self._attributes = {}

    def _make_histogram(self) -> Any:
        from opentelemetry import metrics

        from .. import __version__

        meter = metrics.get_meter("gradguard", __version__)
        self._histogram = meter.create_histogram(
            "gradguard.call.duration",
            unit="s",
            description="Duration of guarded calls.",
            explicit_bucket_boundaries_advisory=list(DURATION_BOUNDS),
        )
        return self._histogram

    def record(
        self, target: str, inference: bool, wall_ns: int, error: BaseException | None
    ) -> None:
        histogram = self._histogram or self._make_histogram()
        # One attribute dict per (target, mode, error type), built once and handed to
        # every record: the SDK keys its aggregation on the same items every time.
        key = (target, inference, None if error is None else type(error))
        attributes = self._attributes.get(key)
        if attributes is None:
            attributes = self._attributes_for(key)
        histogram.record(wall_ns / 1e9, attributes)

    def _attributes_for(self, key: tuple[str, bool, type | None]) -> dict[str, str]:
        target, inference, error_type = key
        mode = "inference" if inference else "no_grad"
        attributes = {"gradguard.target": target, "gradguard.mode": mode}
        if error_type is not None:
            attributes["error.type"] = error_type.__qualname__
        if len(self._attributes) >= 4096:  # bounded: error types made on the fly
            self._attributes.clear()
        self._attributes[key] = attributes
        return attributes

    def start_span(self, name: str) -> Any:
        tracer = self._tracer
        if tracer is None:
            from opentelemetry import trace

            from .. import __version__

            tracer = self._tracer = trace.get_tracer("gradguard", __version__)
        # start_span (not start_as_current_span): the parent is the span current on this,
        # the calling, thread; the call's own span never becomes current, so whatever
        # thread ends it leaves no context behind.
        return tracer.start_span(name)

    def end_span(
        self,
        span: Any,
        name: str,
        kind: str,
        measure: Any,
        wall_ns: int,
        error: BaseException | None,
        record: CallRecord | None = None,
    ) -> None:
        if record is not None:
            fields = call_fields(record, PROCESS.pid, PROCESS.host)
        else:
            inference = measure.inference and not measure.retried
            fields = {
                "target": name,
                "kind": kind,
                "mode": "inference" if inference else "no_grad",
                "fallback": measure.fallback,
                "status": "ok" if error is None else "error",
                "wall_ms": wall_ns / 1e6,
                "call": measure.call,
            }
        span.set_attributes(
            {f"gradguard.{k}": v for k, v in fields.items() if v is not None and k != "timestamp"}
        )
        if error is not None:
            from opentelemetry.trace import Status, StatusCode

            span.set_attribute("error.type", type(error).__qualname__)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


OTEL = OpenTelemetry()
