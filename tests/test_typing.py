"""Type checkers keep a decorated function's signature (ParamSpec and overloads)."""

from __future__ import annotations

from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api", reason="mypy is needed to check the typed API")

CHECKED = Path(__file__).parent / "typing" / "check_signatures.py"


def test_decorated_signatures_type_check() -> None:
    # warn_unused_ignores makes each `type: ignore` above an assertion that mypy does flag
    # the misuse; assert_type pins the return types.
    stdout, stderr, status = api.run(
        ["--strict", "--warn-unused-ignores", "--no-error-summary", str(CHECKED)]
    )
    assert status == 0, stdout + stderr
