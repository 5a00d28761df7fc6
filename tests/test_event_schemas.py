"""Every event type gradguard writes has a JSON Schema in the package, and real events of
each type validate against it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import jsonschema
import pytest
import torch
from torch import nn

import gradguard
from gradguard.testing import event_schema

EVENTS = ("gradguard.call", "gradguard.leak", "gradguard.waste", "gradguard.dropped")


def _lines(path: Path) -> list[dict[str, object]]:
    gradguard.flush()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _valid(event: dict[str, object]) -> None:
    schema = event_schema(str(event["event"]))
    errors = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(event)]
    assert errors == [], (event, errors)


@pytest.mark.parametrize("event", EVENTS)
def test_each_schema_is_a_valid_schema_for_its_event(event: str) -> None:
    schema = event_schema(event)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["properties"]["event"] == {"const": event}


def test_an_unknown_event_type_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"event must be one of 'gradguard\.call'"):
        event_schema("gradguard.calls")


def test_call_and_leak_events_in_a_log_file_validate(tmp_path: Path) -> None:
    log = tmp_path / "calls.jsonl"
    gradguard.configure(log_file=str(log))
    teacher = gradguard.guard(nn.Linear(4, 4), name="teacher")
    student = nn.Linear(4, 4)
    soft = teacher(torch.randn(2, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradguard.LeakWarning)
        with pytest.raises(RuntimeError, match="Inference tensors"):
            student(soft).sum().backward()
    events = _lines(log)
    assert {e["event"] for e in events} == {"gradguard.call", "gradguard.leak"}
    for event in events:
        _valid(event)


def test_waste_events_of_a_scan_validate(tmp_path: Path) -> None:
    from gradguard._scan._report import write_events

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(), nn.Linear(8, 4))
    with gradguard.scan() as findings:
        model(torch.ones(2, 4, requires_grad=True))
        with torch.no_grad():
            model(torch.ones(2, 4))
    assert {f.kind for f in findings} == {"graph_unused", "training_mode"}
    log = tmp_path / "waste.jsonl"
    write_events(str(log), list(findings))
    events = _lines(log)
    assert len(events) == 2
    for event in events:
        _valid(event)


def test_the_dropped_line_validates() -> None:
    from gradguard._telemetry._pipeline import PIPELINE

    PIPELINE._unreported = 3
    try:
        line = json.loads(PIPELINE._dropped_line(False))
    finally:
        PIPELINE._unreported = 0
    assert line["dropped"] == 3
    _valid(line)
