"""The code in the documentation runs as written.

Every ```` ```python ```` block of a page runs, in order, in one fresh interpreter per page
(a page's blocks build on each other, as a reader types them). Fragments that are not
meant to run on their own (a function body out of context, code that needs a GPU or a
server) are written as ```` ```py ```` blocks, which are shown the same and not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _code(page: Path) -> str:
    return "\n".join(_BLOCK.findall(page.read_text(encoding="utf-8")))


RUNNABLE = [p for p in PAGES if _code(p)]


def test_the_docs_have_code_that_runs() -> None:
    assert len(RUNNABLE) >= 5, [p.name for p in RUNNABLE]


@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_pages_code_runs(page: Path, tmp_path: Path) -> None:
    script = tmp_path / "page.py"
    script.write_text(_code(page), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "examples")])}
    env = {k: v for k, v in env.items() if not k.startswith("GRADGUARD_")}
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{page.name}:\n{result.stdout}\n{result.stderr}"
