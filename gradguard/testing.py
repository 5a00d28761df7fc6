"""Helpers for testing code that uses gradguard, without parsing logs.

Example::

    from gradguard.testing import capture_events

    def test_predict_logs_one_inference_call():
        with capture_events() as events:
            predict(model, batch)
        assert [e["mode"] for e in events] == ["inference"]
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from ._telemetry import capture_events

__all__ = ["capture_events", "event_schema"]


def event_schema() -> dict[str, Any]:
    """The JSON Schema of the ``gradguard.call`` event (schema 1), shipped in the package."""
    text = resources.files("gradguard").joinpath("event.schema.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]
