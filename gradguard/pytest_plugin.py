"""pytest plugin: ``--gradguard-leaks`` fails the test that leaks; ``--gradguard-scan``
reports the inference code nobody guarded, per test.

Registered through the ``pytest11`` entry point and off unless asked for. With
``--gradguard-leaks=boundary`` or ``strict``, each test runs inside
``gradguard.watch_leaks(level, action="raise")``, so an inference tensor made by a
guarded call that meets autograd raises ``gradguard.LeakError`` in the test that did it.

With ``--gradguard-scan`` the whole run is scanned (``gradguard.scan()``), and the
findings are listed per test at the end; each is attributed to the test whose forward
made it, even when its graph is freed during a later test. ``--gradguard-scan=fail``
also fails the test (at its teardown) whose findings are known by then, and the run for
those known only at its end. torch is imported only when an option is on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

_LEAK_LEVELS = ("off", "boundary", "strict")
_SCAN = ("off", "report", "fail")
_SESSION = pytest.StashKey[Any]()
_FAILED = pytest.StashKey[int]()  # findings already failed at a test's teardown


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gradguard")
    group.addoption(
        "--gradguard-leaks",
        choices=_LEAK_LEVELS,
        default="off",
        help="fail tests that let inference tensors made by gradguard meet autograd: "
        "'boundary' (module calls) or 'strict' (every torch operation); default off",
    )
    group.addoption(
        "--gradguard-scan",
        nargs="?",
        const="report",
        choices=_SCAN,
        default="off",
        help="report forwards whose graph no backward used, and evaluation code in "
        "training mode, per test at the end ('report', the default when given), or also "
        "fail the tests that have any ('fail'); default off",
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


# --- the scan -----------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("gradguard_scan", "off") == "off":
        return
    from gradguard._scan._findings import Session
    from gradguard._scan._watch import registry

    session = Session()
    registry.open(session)
    config.stash[_SESSION] = session


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION, None)
    if session is not None:
        from gradguard._scan._watch import registry

        registry.close(session)
        del config.stash[_SESSION]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[Any]:
    session = item.config.stash.get(_SESSION, None)
    if session is None:
        yield
        return
    session.label = item.nodeid  # fixtures' forwards count for the test too
    try:
        yield
    finally:
        session.label = None


def _failing(session: Any, labels: list[str]) -> list[Any]:
    from gradguard._scan import DELIBERATE

    return [f for f in session.findings(labels) if f.kind not in DELIBERATE]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    outcome: Any = yield
    session = item.config.stash.get(_SESSION, None)
    if session is None or call.when != "teardown":
        return
    if item.config.getoption("gradguard_scan") != "fail":
        return
    report: pytest.TestReport = outcome.get_result()
    found = _failing(session, [item.nodeid])
    if found and report.passed:
        report.outcome = "failed"
        lines = "\n".join(str(f) for f in found)
        report.longrepr = f"gradguard scan found unguarded inference in this test:\n{lines}"
        item.config.stash[_FAILED] = item.config.stash.get(_FAILED, 0) + len(found)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    scan = session.config.stash.get(_SESSION, None)
    if scan is None:
        return
    import gc

    gc.collect()  # graphs in reference cycles: freed now, reported with their test
    scan.conclude()  # graphs alive at the end were never used by a backward
    if session.config.getoption("gradguard_scan") == "fail" and exitstatus == 0:
        found = _failing(scan, [f.label for f in scan.findings()])
        if len(found) > session.config.stash.get(_FAILED, 0):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    scan = config.stash.get(_SESSION, None)
    if scan is None:
        return
    findings = scan.findings()
    terminalreporter.section("gradguard scan")
    if not findings:
        terminalreporter.write_line("no unguarded inference found")
        return
    by_test: dict[str, list[Any]] = {}
    for f in findings:
        by_test.setdefault(f.label or "(outside any test)", []).append(f)
    for label, items in by_test.items():
        terminalreporter.write_line(label)
        for f in items:
            terminalreporter.write_line(f"  {f}")
