"""The run-time net: models no static look can see still run in eval, and are reported.

A helper in another module using its own global model, a model built inside the call:
on the calls the net watches (the first, then 2, 4, 8…; every call with net="always"),
such a module is switched to eval before its forward, given back afterwards, remembered
for later calls, and reported once per target with an ``EvalWarning``.
"""

from __future__ import annotations

import gc
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradguard
from gradguard import _eval, _hooks
from gradguard._cli import main as cli_main
from gradguard.testing import capture_events

from . import _reach_helper
from ._reach_helper import run_helper

X = torch.randn(3, 4)


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def seen_by(model: nn.Module) -> list[list[bool]]:
    seen: list[list[bool]] = []
    model.register_forward_pre_hook(lambda m, a: seen.append(flags(m)))
    return seen


@pytest.fixture
def helper_model() -> Any:
    """The helper module's global model, fresh and in training mode for each test."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train()
    saved = _reach_helper.HELPER_MODEL
    _reach_helper.HELPER_MODEL = model
    yield model
    _reach_helper.HELPER_MODEL = saved
    assert _eval.registry.idle()
    assert "eval" not in _hooks.forward_pre_hooks.watchers


def reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.inference_mode():
        out = model(x)
    model.train()
    return out


def test_helper_model_in_another_module_runs_in_eval_and_is_remembered(
    helper_model: nn.Module,
) -> None:
    @gradguard.infer
    def predict(x: torch.Tensor) -> torch.Tensor:
        return run_helper(x)

    seen = seen_by(helper_model)
    with pytest.warns(gradguard.EvalWarning) as caught:
        outs = [predict(X) for _ in range(5)]  # calls 3 and 5 are not watched
    assert seen == [[False, False, False]] * 5  # remembered: switched up front on later calls
    assert flags(helper_model) == [True, True, True]
    assert all(torch.equal(out, reference(helper_model, X)) for out in outs)
    assert len(caught) == 1  # once per target
    message = str(caught[0].message)
    assert "torch.nn.modules.container.Sequential" in message
    assert "_reach_helper.py" in message and "in run_helper" in message
    assert "modules=[" in message
    assert caught[0].filename.endswith("_reach_helper.py")  # the line that ran it
    how = [how for m, how in gradguard.describe(predict).modules if m is helper_model]
    assert len(how) == 1 and how[0].startswith("net: running at _reach_helper.py:")


def test_model_built_inside_the_call_runs_in_eval_on_a_watched_call() -> None:
    built: list[nn.Module] = []

    @gradguard.infer(net="always")
    def predict(x: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.9))
        built.append(model)
        seen_by(model)
        return model(x)

    with pytest.warns(gradguard.EvalWarning):
        outs = [predict(X) for _ in range(3)]
    for model, out in zip(built, outs, strict=True):
        assert flags(model) == [True, True, True]  # given back as it was built
        assert torch.equal(out, reference(model, X))


def test_nothing_is_switched_outside_a_guarded_call_and_no_hook_stays(
    helper_model: nn.Module,
) -> None:
    @gradguard.infer
    def predict(x: torch.Tensor) -> torch.Tensor:
        return run_helper(x)

    seen = seen_by(helper_model)
    hooks_before = len(nn.modules.module._global_forward_pre_hooks)
    with pytest.warns(gradguard.EvalWarning):
        predict(X)
    assert "eval" not in _hooks.forward_pre_hooks.watchers
    assert len(nn.modules.module._global_forward_pre_hooks) <= hooks_before
    run_helper(X)  # outside: the user's own training-mode call
    assert seen[-1] == [True, True, True]


def test_the_net_never_touches_a_module_running_in_another_thread(
    helper_model: nn.Module,
) -> None:
    other = nn.Sequential(nn.Dropout(0.5)).train()
    seen_other = seen_by(other)
    inside = threading.Event()
    done = threading.Event()

    @gradguard.infer
    def predict(x: torch.Tensor) -> torch.Tensor:
        out = run_helper(x)
        inside.set()
        assert done.wait(10)
        return out

    def train_meanwhile() -> None:
        assert inside.wait(10)
        other(X)  # a training loop in another thread, while the watched call runs
        done.set()

    thread = threading.Thread(target=train_meanwhile)
    thread.start()
    with pytest.warns(gradguard.EvalWarning):
        predict(X)
    thread.join()
    assert seen_other == [[True, True]]


def test_eval_false_switches_nothing_but_counts(helper_model: nn.Module) -> None:
    @gradguard.infer(eval=False)
    def predict(x: torch.Tensor) -> torch.Tensor:
        return run_helper(x)

    seen = seen_by(helper_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.EvalWarning)
        with capture_events() as events:
            predict(X)
    assert seen == [[True, True, True]]
    assert events[0]["training_modules"] == 1  # the Sequential, its Dropout inside it


def test_explicit_modules_list_warns_but_switches_only_what_it_names(
    helper_model: nn.Module,
) -> None:
    named = nn.Linear(4, 4).train()

    @gradguard.infer(modules=[named])
    def predict(x: torch.Tensor) -> torch.Tensor:
        return run_helper(named(x))

    seen = seen_by(helper_model)
    with (
        pytest.warns(gradguard.EvalWarning, match="modules= does not name"),
        capture_events() as events,
    ):
        predict(X)
    assert seen == [[True, True, True]]
    assert events[0]["training_modules"] == 1
    assert events[0]["eval_switched"] == 1


def test_net_off_neither_switches_nor_warns(helper_model: nn.Module) -> None:
    @gradguard.infer(net="off")
    def predict(x: torch.Tensor) -> torch.Tensor:
        return run_helper(x)

    seen = seen_by(helper_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.EvalWarning)
        predict(X)
    assert seen == [[True, True, True]]


def test_spaced_calls_only_between_watched_calls_a_new_model_runs_as_it_is() -> None:
    """What the docs say the net cannot do: a model that only the net can find, first
    run on a call it does not watch, runs as it is until the next watched call."""
    models = [nn.Dropout(0.5).train() for _ in range(5)]
    seen: list[bool] = []
    for model in models:
        model.register_forward_pre_hook(lambda m, a: seen.append(m.training))

    @gradguard.infer
    def predict(i: int) -> None:
        boxes[0]["models"][i](X)  # two levels down: out of the static look's reach

    boxes = [{"models": dict(enumerate(models, start=1))}]
    with pytest.warns(gradguard.EvalWarning):
        for call in range(1, 6):
            predict(call)
    assert seen == [False, False, True, False, True]  # calls 1, 2, 4 are watched


def test_remembered_modules_are_held_weakly(helper_model: nn.Module) -> None:
    @gradguard.infer
    def predict(x: torch.Tensor) -> torch.Tensor:
        return run_helper(x)

    dropped = _reach_helper.HELPER_MODEL = nn.Sequential(nn.Dropout(0.5))
    with pytest.warns(gradguard.EvalWarning):
        predict(X)
    ref = weakref.ref(dropped)
    _reach_helper.HELPER_MODEL = helper_model
    del dropped
    gc.collect()
    assert ref() is None
    assert [m for m, _ in gradguard.describe(predict).modules] == []


def test_generator_steps_run_a_helper_model_in_eval(helper_model: nn.Module) -> None:
    @gradguard.infer
    def stream(n: int) -> Any:
        for _ in range(n):
            yield run_helper(X)

    seen = seen_by(helper_model)
    with pytest.warns(gradguard.EvalWarning):
        outs = list(stream(3))
    assert seen == [[False, False, False]] * 3
    assert flags(helper_model) == [True, True, True]
    assert all(torch.equal(out, reference(helper_model, X)) for out in outs)


def test_scope_block_running_a_helper_model(helper_model: nn.Module) -> None:
    seen = seen_by(helper_model)
    with pytest.warns(gradguard.EvalWarning), gradguard.scope():
        run_helper(X)
    assert seen == [[False, False, False]]
    assert flags(helper_model) == [True, True, True]


def test_audit_fail_on_grad_fails_on_a_call_that_ran_a_model_in_training_mode(
    helper_model: nn.Module, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "calls.jsonl"
    gradguard.configure(log_file=str(log))

    @gradguard.infer(eval=False)
    def predict(x: torch.Tensor) -> torch.Tensor:
        return run_helper(x)

    predict(X)
    gradguard.configure(log_file=None)
    assert cli_main(["audit", str(log), "--fail-on", "grad"]) == 1
    assert "grad" in capsys.readouterr().err


def test_eval_switched_counts_what_the_net_switched(helper_model: nn.Module) -> None:
    """A call on which the net switched a model reports it in ``eval_switched``."""

    @gradguard.infer
    def predict(x: torch.Tensor) -> torch.Tensor:
        return run_helper(x)

    with (
        warnings.catch_warnings(),
        capture_events() as events,
    ):
        warnings.simplefilter("ignore", gradguard.EvalWarning)
        predict(X)  # found by the net
        predict(X)  # switched up front: remembered
    assert [e["eval_switched"] for e in events] == [3, 3]  # the Sequential and both children
    assert [e["training_modules"] for e in events] == [0, 0]


_DYNAMO_SCRIPT = """
import sys, warnings
import torch
import torch._dynamo  # imported, as transformers does; nothing compiled yet
from torch import nn
import gradguard

seen = []

@gradguard.infer
def predict(x):
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout())  # built inside: only the net sees it
    model[1].register_forward_pre_hook(lambda m, a: seen.append(m.training))
    return model(x)

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    predict(torch.ones(2, 4))
warned = [w.category.__name__ for w in caught]
print("before compile:", gradguard.describe(predict).net, seen, warned)
compiled = torch.compile(nn.Linear(4, 4), backend="eager")
compiled(torch.ones(2, 4))
print("after compile:", gradguard.describe(predict).net)
"""


def test_dynamo_imported_leaves_the_net_on_until_something_is_compiled(
    tmp_path: Path,
) -> None:
    """transformers imports torch._dynamo; the net stays on until dynamo compiles, and
    ``describe()`` then says it is off."""
    import os
    import subprocess
    import sys

    script = tmp_path / "dynamo_net.py"
    script.write_text(_DYNAMO_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Dropout ran in eval, and the EvalWarning said why.
    assert lines[0] == (
        "before compile: watches calls 1, 2, 4, 8… [False] ['EvalWarning']"
    ), result.stdout
    assert lines[1] == "after compile: off: torch.compile is in use in this process"


def test_the_eval_warning_says_what_to_write_for_a_function_and_for_a_block() -> None:
    def built() -> torch.Tensor:
        return nn.Sequential(nn.Linear(4, 4), nn.Dropout())(X)

    with pytest.warns(gradguard.EvalWarning) as caught:
        gradguard.infer(built)()
    assert "@gradguard.infer(modules=[model, ...])" in str(caught[0].message)
    assert "net='always' watches every call" in str(caught[0].message)
    with pytest.warns(gradguard.EvalWarning) as caught, gradguard.scope(name="test.block"):
        built()
    assert "gradguard.scope(model, ...)" in str(caught[0].message)
    assert "@gradguard.infer" not in str(caught[0].message)
