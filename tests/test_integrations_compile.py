"""gradguard and ``torch.compile``: the four ways to combine them, with the eager backend
(fast) and with inductor on the CPU (``slow``).

``torch.compile(gradguard.guard(model))``, ``torch.compile`` of an ``@gradguard.infer``
function, ``gradguard.guard(torch.compile(model))`` and ``model.compile()`` followed by
``gradguard.guard(model)`` all run the guard eagerly and compile the model, in eval and
under inference mode: the results of eager ``eval()`` + ``inference_mode()``, every flag
given back, one event per call, no graph break, no recompilation once warm, and no warning
from dynamo or from torch about gradguard's global hooks. Either way the first call's
``wall_ms`` includes the compilation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import gradguard
from gradguard.testing import capture_events

ROOT = Path(__file__).resolve().parent.parent
CALLS = 4
WARM = 2  # calls after which nothing compiles again


class Net(nn.Module):
    """Dropout and BatchNorm: in training mode its output differs from eval's."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


MODULES = 7  # Net, Sequential, Linear, BatchNorm1d, ReLU, Dropout, Linear


class Square(nn.Module):
    """A model whose outputs it can take as inputs: the leak the boundary is for."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.second = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(x)))


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """Each test compiles from nothing and leaves no compiled code behind."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def counters() -> Any:
    from torch._dynamo.utils import counters

    return counters


def eager_eval(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a guarded call must give: the model in eval, under inference_mode."""
    model.eval()
    try:
        with torch.inference_mode():
            return model(x)
    finally:
        model.train()


def build(shape: str, model: nn.Module, backend: str, **options: Any) -> Callable[..., Any]:
    """The guarded, compiled callable of one of the four shapes."""
    if shape == "compile(guard)":
        return torch.compile(gradguard.guard(model), backend=backend, **options)  # type: ignore[no-any-return]
    if shape == "compile(infer)":

        @gradguard.infer
        def predict(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
            return net(x)

        compiled = torch.compile(predict, backend=backend, **options)
        return lambda x: compiled(model, x)
    if shape == "guard(compile)":
        return gradguard.guard(torch.compile(model, backend=backend, **options))
    if shape == "guard.compile()":  # compiled in place through the guard
        guarded = gradguard.guard(model)
        guarded.compile(backend=backend, **options)
        return guarded
    assert shape == "model.compile()"
    model.compile(backend=backend, **options)
    return gradguard.guard(model)


SHAPES = [
    "compile(guard)",
    "compile(infer)",
    "guard(compile)",
    "model.compile()",
    "guard.compile()",
]
TARGETS = {
    "compile(guard)": f"{__name__}:Net",
    "compile(infer)": f"{__name__}:build.<locals>.predict",
    "guard(compile)": "torch._dynamo.eval_frame:OptimizedModule",
    "model.compile()": f"{__name__}:Net",
    "guard.compile()": f"{__name__}:Net",
}


def about_compile_or_gradguard(caught: warnings.WarningMessage) -> bool:
    message = str(caught.message)
    return (
        issubclass(caught.category, gradguard.GradguardWarning)
        or "Dynamo" in message
        or "global hooks" in message
        or f"{os.sep}_dynamo{os.sep}" in caught.filename
        or f"{os.sep}gradguard{os.sep}" in caught.filename
    )


def run_guarded(shape: str, backend: str, *, keep_outputs: bool) -> None:
    """Call the shape CALLS times and check results, flags, events, graphs and warnings.

    With ``keep_outputs`` every output stays alive, so the leak boundary's global hook is
    installed from the second call on: the case in which torch would warn about it.
    """
    torch.manual_seed(0)
    net = Net().train()
    x = torch.randn(6, 8)
    expected = eager_eval(net, x)
    running_mean = net.layers[1].running_mean.clone()
    counts = counters()
    counts.clear()
    kept = []
    with warnings.catch_warnings(record=True) as caught, capture_events() as events:
        warnings.simplefilter("always")
        guarded = build(shape, net, backend)
        for call in range(1, CALLS + 1):
            out = guarded(x)
            torch.testing.assert_close(out, expected)
            assert out.is_inference()
            assert all(m.training for m in net.modules()), "a flag was not given back"
            if keep_outputs:
                kept.append(out)
            if call == WARM:
                frames = dict(counts["frames"])
                graphs = counts["stats"]["unique_graphs"]
    # None from dynamo, none about global hooks, none of gradguard's. (Inductor's first
    # compile imports modules that warn about their own deprecations: not these.)
    assert [str(w.message) for w in caught if about_compile_or_gradguard(w)] == []
    # BatchNorm ran in eval: its running statistics did not move.
    torch.testing.assert_close(net.layers[1].running_mean, running_mean)
    assert [e["call"] for e in events] == list(range(1, CALLS + 1))
    assert {(e["target"], e["mode"], e["status"], e["fallback"]) for e in events} == {
        (TARGETS[shape], "inference", "ok", False)
    }
    switched = MODULES + (shape == "guard(compile)")  # the OptimizedModule is one more
    assert {e["eval_switched"] for e in events} == {switched}
    # The model compiled: no graph break, and nothing compiled again once warm.
    assert not counts["graph_break"]
    assert counts["stats"]["unique_graphs"] == graphs >= 1
    assert dict(counts["frames"]) == frames
    assert graphs == 1


@pytest.mark.parametrize("keep_outputs", [False, True], ids=["outputs-dropped", "outputs-kept"])
@pytest.mark.parametrize("shape", SHAPES)
def test_compiled_guard_runs_guarded_once_per_call_in_one_graph(
    shape: str, keep_outputs: bool
) -> None:
    run_guarded(shape, "eager", keep_outputs=keep_outputs)


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_compiled_guard_with_inductor(shape: str) -> None:
    run_guarded(shape, "inductor", keep_outputs=True)


@pytest.mark.parametrize("shape", SHAPES)
def test_fullgraph_over_a_guard_compiles_the_model_as_one_graph(shape: str) -> None:
    torch.manual_seed(0)
    net = Net().train()
    x = torch.randn(6, 8)
    guarded = build(shape, net, "eager", fullgraph=True)
    counters().clear()
    torch.testing.assert_close(guarded(x), eager_eval(net, x))
    assert counters()["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("shape", ["compile(guard)", "guard(compile)"])
def test_a_global_hook_someone_else_installed_still_gets_torchs_warning(shape: str) -> None:
    from torch._dynamo.eval_frame import OptimizedModule

    torch.manual_seed(0)
    guarded = build(shape, Net().train(), "eager")
    compiled = guarded if shape == "compile(guard)" else gradguard.unguard(guarded)
    assert isinstance(compiled, OptimizedModule)
    handle = nn.modules.module.register_module_forward_hook(lambda *args: None)
    try:
        with pytest.warns(UserWarning, match="when there are global hooks"):
            guarded(torch.randn(6, 8))
    finally:
        handle.remove()


def test_a_guard_called_inside_compiled_code_is_a_graph_break() -> None:
    torch.manual_seed(0)
    net = Net().train()
    guarded = gradguard.guard(net)
    x = torch.randn(6, 8)

    def postprocess(x: torch.Tensor) -> torch.Tensor:
        return guarded(x).softmax(-1)

    counters().clear()
    with warnings.catch_warnings(record=True) as caught, capture_events() as events:
        warnings.simplefilter("always")
        compiled = torch.compile(postprocess, backend="eager")
        for _ in range(3):
            out = compiled(x)
    # The guard runs eagerly at the break, its call guarded as ever.
    torch.testing.assert_close(out, eager_eval(net, x).softmax(-1))
    assert [e["call"] for e in events] == [1, 2, 3]
    assert all(m.training for m in net.modules())
    assert sum(counts for counts in counters()["graph_break"].values()) >= 1
    assert [str(w.message) for w in caught if f"{os.sep}gradguard{os.sep}" in w.filename] == []


def test_fullgraph_over_a_function_that_calls_a_guard_says_what_to_do() -> None:
    # In a process of its own: after a fullgraph compilation fails, torch 2.13 keeps
    # frames alive (generators later dropped are not finalized), which would upset other
    # tests in this process.
    script = (
        "import torch, gradguard\n"
        "guarded = gradguard.guard(torch.nn.Linear(8, 4))\n"
        "def postprocess(x):\n"
        "    return guarded(x).softmax(-1)\n"
        "try:\n"
        "    torch.compile(postprocess, backend='eager', fullgraph=True)(torch.ones(2, 8))\n"
        "except Exception as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADGUARD_SAMPLE": "0"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Unsupported")
    assert "gradguard runs its guard eagerly, around compiled code" in result.stdout
    assert "gradguard.guard(torch.compile(model))" in result.stdout


# The hook stays in until the next module or guarded call after the last output died, and
# torch warns on the bare compiled training call (docs/compile.md says so).
@pytest.mark.filterwarnings("ignore:Using `torch.compile\\(module\\)` when there are global hooks")
def test_compiled_model_trains_after_guarded_calls() -> None:
    """Guarded eval calls leave no inference tensor in the compiled model's state."""
    torch.manual_seed(0)
    net = Net().train()
    compiled = torch.compile(net, backend="eager")
    guarded = gradguard.guard(compiled)
    x = torch.randn(6, 8)
    guarded(x)
    loss = compiled(x).sum()  # training mode, autograd on: a second graph
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert not net.layers[1].running_mean.is_inference()
    assert not gradguard.check_module(net)


@pytest.mark.parametrize(
    ("shape", "receiver"),
    [("compile(guard)", "Linear"), ("guard(compile)", "Square")],
)
def test_leak_boundary_names_the_guarded_call_with_compiled_models(
    shape: str, receiver: str
) -> None:
    """A guarded output fed to training is reported: at the model's first module after
    torch.compile(guard(model)); at the compiled model whose forward torch failed in,
    named in torch's own error, after guard(torch.compile(model))."""
    torch.manual_seed(0)
    net = Square().train()
    guarded = build(shape, net, "eager")
    trainer: nn.Module = gradguard.unguard(guarded) if shape == "guard(compile)" else net
    out = guarded(torch.randn(6, 8))
    target = TARGETS[shape] if shape == "guard(compile)" else f"{__name__}:Square"
    with pytest.warns(
        gradguard.LeakWarning, match=f"{target} .call 1. enters the {receiver} module"
    ):
        # torch's own warning, for this bare compiled call made while the hook is in
        warnings.filterwarnings("ignore", message="Using `torch.compile\\(module\\)`")
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved"):
            trainer(out).sum().backward()


def test_import_and_guarded_calls_do_not_import_dynamo() -> None:
    script = (
        "import sys, torch, gradguard\n"
        "g = gradguard.guard(torch.nn.Linear(2, 2))\n"
        "f = gradguard.infer(lambda m, x: m(x))\n"
        "g(torch.ones(1, 2)); f(g, torch.ones(1, 2))\n"
        "assert 'torch._dynamo' not in sys.modules, 'imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GRADGUARD_SAMPLE": "0"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr
