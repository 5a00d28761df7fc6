"""gradguard and ``torch.compile``, both ways round, with the inductor backend on the CPU.

``gradguard.guard(torch.compile(model))`` is the way to compile a guarded model: the guard
runs eagerly around the compiled module, and the model compiles into one graph, in eval.
``torch.compile(gradguard.guard(model))`` gives the same results and events, but dynamo
traces into the proxy's ``__call__``: it breaks the graph some thirty times on
gradguard's bookkeeping (locks, clocks, torch's C++ mode guard) and recompiles those
frames on each of the first eight or so calls, seconds in all, until its recompile limit
leaves them to run eagerly. Whether the model's own forward is compiled then depends on
the model. Either way the first call's ``wall_ms`` includes the compilation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

import gradguard
from gradguard.testing import capture_events

pytestmark = [
    pytest.mark.slow,
    # dynamo explains each graph break in gradguard's internals with a UserWarning, and
    # torch warns that the leak sentinel's global hook fires once more for a compiled module.
    pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace"),
    pytest.mark.filterwarnings(
        "ignore:Using `torch.compile\\(module\\)` when there are global hooks"
    ),
]

CALLS = 3


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


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """Each test compiles from nothing and leaves no compiled code behind."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def net() -> Net:
    torch.manual_seed(0)
    return Net().train()


def eager_eval(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What a guarded call must give: the model in eval, under inference_mode."""
    model.eval()
    try:
        with torch.inference_mode():
            return model(x)
    finally:
        model.train()


def assert_guarded_calls(guarded: nn.Module, net: Net, x: torch.Tensor) -> list[dict[str, Any]]:
    """Call ``guarded`` CALLS times; each gives the eager eval result and leaves training on."""
    expected = eager_eval(net, x)
    running_mean = net.layers[1].running_mean.clone()
    with capture_events() as events:
        for _ in range(CALLS):
            out = guarded(x)
            torch.testing.assert_close(out, expected)
            assert out.is_inference()
            assert all(m.training for m in net.modules()), "a flag was not given back"
    # BatchNorm ran in eval: its running statistics did not move.
    torch.testing.assert_close(net.layers[1].running_mean, running_mean)
    assert not torch.allclose(net(x), expected)  # and in training mode the result differs
    assert len(events) == CALLS
    assert [e["call"] for e in events] == list(range(1, CALLS + 1))
    assert {(e["kind"], e["mode"], e["status"], e["fallback"]) for e in events} == {
        ("module", "inference", "ok", False)
    }
    return events


def test_compile_over_the_guard_runs_guarded_and_logs_every_call(net: Net) -> None:
    # What dynamo cannot trace of the guard runs eagerly: it acts on every call.
    compiled = torch.compile(gradguard.guard(net))
    events = assert_guarded_calls(compiled, net, torch.randn(6, 8))
    assert {e["target"] for e in events} == {f"{__name__}:Net"}
    assert {e["eval_switched"] for e in events} == {MODULES}


def test_guard_over_the_compiled_module_compiles_the_model(net: Net) -> None:
    from torch._dynamo.utils import counters

    counters.clear()
    compiled = torch.compile(net)
    guarded = gradguard.guard(compiled)
    assert gradguard.unguard(guarded) is compiled
    events = assert_guarded_calls(guarded, net, torch.randn(6, 8))
    assert {e["target"] for e in events} == {"torch._dynamo.eval_frame:OptimizedModule"}
    # The OptimizedModule wrapper is a module of its own, switched with the model's seven.
    assert {e["eval_switched"] for e in events} == {MODULES + 1}
    assert compiled.training
    assert counters["stats"]["calls_captured"] > 0  # the model itself was compiled
    assert not counters["graph_break"]


def test_compiled_model_trains_after_guarded_calls(net: Net) -> None:
    """Guarded eval calls leave no inference tensor in the compiled model's state."""
    compiled = torch.compile(net)
    guarded = gradguard.guard(compiled)
    x = torch.randn(6, 8)
    guarded(x)
    loss = compiled(x).sum()  # training mode, autograd on: a second graph
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())
    assert not net.layers[1].running_mean.is_inference()
    assert not gradguard.check_module(net)
