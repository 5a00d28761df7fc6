"""The API reference page documents every public name."""

from __future__ import annotations

import re
from pathlib import Path

import gradguard

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_is_on_the_reference_page() -> None:
    page = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^::: gradguard\.(\w+)$", page, re.M))
    assert documented == set(gradguard.__all__)
