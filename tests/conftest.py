"""Shared fixtures: every test starts from torch's default modes and leaves them so."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _modes_come_back() -> Iterator[None]:
    """Fail any test that leaves grad mode or inference mode changed behind it."""
    assert torch.is_grad_enabled()
    assert not torch.is_inference_mode_enabled()
    yield
    assert torch.is_grad_enabled(), "the test left grad mode off"
    assert not torch.is_inference_mode_enabled(), "the test left inference mode on"
