"""pytest plugin: ``pytest --gradguard-leaks=strict`` fails the test that leaks.

Registered through the ``pytest11`` entry point and off unless asked for. With
``--gradguard-leaks=boundary`` or ``strict``, each test runs inside
``gradguard.watch_leaks(level, action="raise")``, so an inference tensor made by a
guarded call that meets autograd raises ``gradguard.LeakError`` in the test that did it.
torch is imported only when a test runs with the option on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

_LEVELS = ("off", "boundary", "strict")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradguard")
    group.addoption(
        "--gradguard-leaks",
        choices=_LEVELS,
        default="off",
        help="fail tests that let inference tensors made by gradguard meet autograd: "
        "'boundary' (module calls) or 'strict' (every torch operation); default off",
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    level = item.config.getoption("gradguard_leaks")
    if level == "off":
        yield
        return
    from gradguard._leaks import watch_leaks

    with watch_leaks(level=level, action="raise"):
        yield
