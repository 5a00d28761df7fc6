"""Shared fixtures: every test starts from torch's default modes and gradguard's defaults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog
import torch

from gradguard import _config, _net, _steps, _telemetry

pytest_plugins = ["pytester"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip, with the reason, where torch sees no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _modes_come_back() -> Iterator[None]:
    """Fail any test that leaves grad mode or inference mode changed behind it."""
    assert torch.is_grad_enabled()
    assert not torch.is_inference_mode_enabled()
    yield
    assert torch.is_grad_enabled(), "the test left grad mode off"
    assert not torch.is_inference_mode_enabled(), "the test left inference mode on"


@pytest.fixture(autouse=True)
def _fresh_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from gradguard's defaults, whatever the environment says."""
    for variable in _config._ENV.values():
        monkeypatch.delenv(variable, raising=False)
    _config.reset()
    _telemetry.reset()
    _net.compiled.reset()
    yield
    _telemetry.flush()
    _steps.bodies.reset()
    _config.reset()
    _telemetry.reset()
    # structlog.testing.capture_logs() leaves structlog marked configured, which would
    # send every later test's events through structlog's default printer.
    structlog.reset_defaults()
