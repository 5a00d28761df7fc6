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


# Each event type's JSON Schema file, shipped in the package.
_SCHEMA_FILES = {
    "gradguard.call": "event.schema.json",
    "gradguard.leak": "leak.schema.json",
    "gradguard.waste": "waste.schema.json",
    "gradguard.dropped": "dropped.schema.json",
}


def event_schema(event: str = "gradguard.call") -> dict[str, Any]:
    """The JSON Schema (schema 1) of an event type gradguard writes, shipped in the package.

    ``event`` is ``"gradguard.call"`` (one per guarded call), ``"gradguard.leak"`` (the leak
    sentinel), ``"gradguard.waste"`` (``gradguard scan --log-file``) or
    ``"gradguard.dropped"`` (events dropped when too many waited to be written).
    """
    name = _SCHEMA_FILES.get(event)
    if name is None:
        listed = ", ".join(map(repr, _SCHEMA_FILES))
        msg = f"event must be one of {listed}; got {event!r}"
        raise ValueError(msg)
    text = resources.files("gradguard").joinpath(name).read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]
