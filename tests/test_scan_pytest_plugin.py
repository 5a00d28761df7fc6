"""``pytest --gradguard-scan``: findings per test, attributed to the test that ran the forward."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = """
import torch
from torch import nn

model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout())
kept = []


def test_clean():
    with torch.no_grad():
        model.eval()(torch.ones(2, 4))
    model.train()


def test_forgot_no_grad():
    model.eval()
    model(torch.ones(2, 4))
    model.train()


def test_keeps_a_graph():
    model.eval()
    kept.append(model(torch.ones(3, 4)))
    model.train()


def test_frees_it_later():
    kept.clear()


def test_forgot_eval():
    with torch.no_grad():
        model(torch.ones(2, 4))
"""


def line(text: str) -> int:
    """The line of ``text`` in the test file made from TESTS."""
    return TESTS.strip().splitlines().index(text) + 1


def test_findings_are_listed_per_test_at_the_end(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_models=TESTS)
    result = pytester.runpytest("--gradguard-scan")
    result.assert_outcomes(passed=5)
    out = result.stdout.str()
    section = out[out.index("gradguard scan") :]
    assert "test_models.py::test_clean" not in section
    assert "test_models.py::test_frees_it_later" not in section  # freed there, made earlier
    result.stdout.fnmatch_lines(
        [
            "*= gradguard scan =*",
            "test_models.py::test_keeps_a_graph",
            f"  test_models.py:{line('    kept.append(model(torch.ones(3, 4)))')}: graph_unused:"
            " torch.nn.modules.container.Sequential*",
            "test_models.py::test_forgot_no_grad",
            f"  test_models.py:{line('    model(torch.ones(2, 4))')}: graph_unused:*",
            "test_models.py::test_forgot_eval",
            f"  test_models.py:{line('        model(torch.ones(2, 4))')}: training_mode:*Dropout*",
        ]
    )


def test_fail_fails_the_tests_with_findings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_models=TESTS)
    result = pytester.runpytest("--gradguard-scan=fail")
    # The graph kept by test_keeps_a_graph is freed in a later test: that finding fails
    # the run, not a test; the two others fail their tests at teardown.
    result.assert_outcomes(passed=5, errors=2)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgot_no_grad*",
            "*gradguard scan found unguarded inference in this test:",
        ]
    )


def test_deliberate_training_mode_does_not_fail(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_bn="""
        import torch
        from torch import nn

        def test_update_bn():
            model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
            torch.optim.swa_utils.update_bn([torch.randn(3, 4)], model)
        """
    )
    result = pytester.runpytest("--gradguard-scan=fail")
    result.assert_outcomes(passed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*training_mode_deliberate*"])


def test_off_by_default_and_nothing_installed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_off="""
        from gradguard import _hooks

        def test_no_watcher():
            assert "scan" not in _hooks.forward_pre_hooks.watchers
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=1)
    assert "gradguard scan" not in result.stdout.str()
