"""``capture_events()``: gradguard's events in a list, for tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ._cuda import WAITING
from ._pipeline import PIPELINE

__all__ = ["capture_events"]


@contextmanager
def capture_events() -> Iterator[list[dict[str, Any]]]:
    """Collect gradguard's events in a list instead of logging them (for tests).

    Events are complete dicts, with ``event`` and anything bound with
    ``structlog.contextvars``; events still waiting for a CUDA device time are flushed
    into the list when the block ends.

    Example::

        with gradguard.testing.capture_events() as events:
            predict(model, x)
        assert events[0]["mode"] == "inference"
    """
    captured: list[dict[str, Any]] = []
    PIPELINE.captures.append(captured)
    try:
        yield captured
    finally:
        try:
            WAITING.drain(block=True)
        finally:
            PIPELINE.captures.remove(captured)
