"""A ``prometheus_client`` collector that reads gradguard's aggregates at scrape time.

``REGISTRY.register(gradguard.prometheus_collector())`` (``pip install
gradguard[prometheus]``). Nothing is recorded per call for Prometheus: a scrape folds
the aggregates the calls already fill and turns each target's sketches into histograms
with fixed bounds, in base units (seconds, bytes). A sketch bucket (1% wide) counts under
the first bound at or above its upper edge, so a value within 2% below a bound may be
counted one bucket up; ``_count`` and ``_sum`` are exact.

Labels are few and bounded: ``target`` (one per guarded function, module or scope),
``mode`` and ``status``; no pid, no thread, no rank. Each process reports its own calls:
see docs/telemetry.md for several worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .._audit._sketch import LogSketch
from ._aggregate import AGGREGATES
from ._otel import DURATION_BOUNDS
from ._pipeline import PIPELINE

__all__ = ["MEMORY_BOUNDS", "Collector", "prometheus_collector"]

MEMORY_BOUNDS: tuple[float, ...] = tuple(float(4**i) * 2**10 for i in range(3, 16))  # 64 KiB..1 PiB


class Collector:
    """The collector; ``collect()`` is what ``prometheus_client`` calls per scrape."""

    def describe(self) -> Iterator[Any]:
        """The metric families without samples, so registering folds nothing."""
        yield from self._families()

    def collect(self) -> Iterator[Any]:
        calls, duration, gpu, memory, leaks, fallbacks, dropped = self._families()
        for aggregate in AGGREGATES.targets():
            name = aggregate.name
            for counts in aggregate.call_counts():
                calls.add_metric([name, counts.mode, counts.status], counts.calls)
            group = aggregate.group
            _histogram(duration, name, group.wall, DURATION_BOUNDS, 1e-3)
            _histogram(gpu, name, group.gpu, DURATION_BOUNDS, 1e-3)
            _histogram(memory, name, group.mem, MEMORY_BOUNDS, 1.0)
            leaks.add_metric([name], group.leaks)
            fallbacks.add_metric([name], group.fallbacks)
        dropped.add_metric([], PIPELINE.dropped)
        yield from (calls, duration, gpu, memory, leaks, fallbacks, dropped)

    @staticmethod
    def _families() -> tuple[Any, ...]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        return (
            CounterMetricFamily(
                "gradguard_calls", "Guarded calls.", labels=["target", "mode", "status"]
            ),
            HistogramMetricFamily(
                "gradguard_call_duration_seconds",
                "Wall time of guarded calls.",
                labels=["target"],
                unit="seconds",
            ),
            HistogramMetricFamily(
                "gradguard_call_gpu_seconds",
                "CUDA device time of guarded calls (logged calls on CUDA).",
                labels=["target"],
                unit="seconds",
            ),
            HistogramMetricFamily(
                "gradguard_call_peak_memory_bytes",
                "Peak memory of guarded calls (logged calls).",
                labels=["target"],
                unit="bytes",
            ),
            CounterMetricFamily(
                "gradguard_leaks", "Inference tensors that met autograd.", labels=["target"]
            ),
            CounterMetricFamily(
                "gradguard_fallbacks", "Calls that fell back to no_grad.", labels=["target"]
            ),
            CounterMetricFamily(
                "gradguard_events_dropped", "Events gradguard could not write.", labels=[]
            ),
        )


def _histogram(
    family: Any, target: str, sketch: LogSketch, bounds: Sequence[float], scale: float
) -> None:
    """Add ``sketch`` (values in units of ``scale`` base units) under ``bounds``."""
    counts = [0] * len(bounds)
    total = 0
    index = 0
    for _, upper, count in sketch.buckets():
        value = upper * scale
        while index < len(bounds) and bounds[index] < value * (1 - 1e-12):
            index += 1
        if index < len(bounds):
            counts[index] += count
        total += count
    if not total:
        return
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(bounds, counts, strict=True):
        running += count
        buckets.append((_le(bound), running))
    buckets.append(("+Inf", total))
    family.add_metric([target], buckets, sum_value=sketch.sum * scale)


def _le(bound: float) -> str:
    return repr(float(bound))


def prometheus_collector() -> Collector:
    """A collector of gradguard's per-target figures for ``prometheus_client``.

    Example::

        from prometheus_client import REGISTRY, start_http_server
        REGISTRY.register(gradguard.prometheus_collector())
        start_http_server(9100)

    Exposes ``gradguard_calls_total{target,mode,status}``,
    ``gradguard_call_duration_seconds{target}``, ``gradguard_call_gpu_seconds{target}``,
    ``gradguard_call_peak_memory_bytes{target}`` (histograms),
    ``gradguard_leaks_total{target}``, ``gradguard_fallbacks_total{target}`` and
    ``gradguard_events_dropped_total``, read at scrape time from this process's figures.
    """
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        msg = (
            "gradguard.prometheus_collector() needs prometheus_client, which is not "
            "installed; install it with `pip install gradguard[prometheus]`"
        )
        raise ImportError(msg) from None
    return Collector()
