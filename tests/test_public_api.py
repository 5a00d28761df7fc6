"""The public names: one list, what the package exports, and what type checkers see."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import gradguard

INIT = Path(gradguard.__file__)


def _type_checking_imports() -> dict[str, str]:
    """The names the ``if TYPE_CHECKING:`` block of ``__init__.py`` re-exports, by module."""
    tree = ast.parse(INIT.read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            for statement in node.body:
                assert isinstance(statement, ast.ImportFrom)
                for alias in statement.names:
                    assert alias.asname == alias.name, f"{alias.name}: re-export as itself"
                    found[alias.name] = "." * statement.level + (statement.module or "")
    return found


def test_all_is_derived_from_the_one_list_and_sorted() -> None:
    assert gradguard.__all__ == sorted(gradguard._WHERE)


def test_type_checkers_see_the_same_names_from_the_same_modules() -> None:
    assert _type_checking_imports() == gradguard._WHERE


def test_every_public_name_loads() -> None:
    for name in gradguard.__all__:
        value = getattr(gradguard, name)
        assert value is not None, name
        assert name in dir(gradguard)


def test_an_unknown_name_says_so() -> None:
    try:
        gradguard.not_a_name  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as error:
        assert "has no attribute 'not_a_name'" in str(error)
    else:
        raise AssertionError("no AttributeError")


def test_import_prints_nothing_and_loads_no_torch() -> None:
    script = "import sys, gradguard; assert 'torch' not in sys.modules, 'torch imported'"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
