"""gradguard.guard(): a transparent, guarded proxy of an nn.Module."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch import nn

import gradguard

from .test_decorate import INFERENCE, OUTSIDE, Recorder, state


class Generator(Recorder):
    """A stand-in for a Hugging Face model with a generate() method."""

    def generate(self, x: torch.Tensor, steps: int = 2) -> list[torch.Tensor]:
        out = []
        for _ in range(steps):
            x = self(x)
            out.append(x)
        return out


def test_isinstance_and_transparency() -> None:
    model = Generator()
    g = gradguard.guard(model)
    assert isinstance(g, nn.Module)
    assert isinstance(g, Generator)
    assert g.__wrapped__ is model
    assert g.linear is model.linear
    assert list(g.parameters()) == list(model.parameters())
    g.extra = 5  # attribute writes reach the module
    assert model.extra == 5
    assert gradguard.unguard(g) is model


def test_call_and_forward_are_guarded_and_flags_come_back() -> None:
    model = Recorder().train()
    g = gradguard.guard(model)
    out = g(torch.ones(1, 3))
    assert model.seen[-1] == (*INFERENCE, False)
    assert out.is_inference()
    g.forward(torch.ones(1, 3))
    assert model.seen[-1] == (*INFERENCE, False)
    assert model.training and state() == OUTSIDE


def test_state_dict_keys_are_the_modules_own() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    g = gradguard.guard(model)
    g(torch.ones(3, 2))
    assert list(g.state_dict()) == list(model.state_dict())
    assert not any(k.startswith(("module.", "_orig_mod.", "_self_")) for k in g.state_dict())
    assert not any(k.startswith("_self_") for k in vars(model))


def test_named_methods_are_guarded_others_are_not() -> None:
    model = Generator().train()
    g = gradguard.guard(model, methods=("generate",))
    outs = g.generate(torch.ones(1, 3))
    assert all(o.is_inference() for o in outs)
    assert model.seen[-2:] == [(*INFERENCE, False)] * 2
    assert gradguard.describe(g, "generate").name.endswith("Generator.generate")
    plain = gradguard.guard(Generator())
    plain.generate(torch.ones(1, 3))
    assert plain.seen[-1][:2] == OUTSIDE


def test_guarding_twice_does_not_wrap_twice() -> None:
    model = Recorder()
    g = gradguard.guard(model)
    assert gradguard.guard(g) is g
    again = gradguard.guard(g, mode="no_grad")
    assert again.__wrapped__ is model
    assert gradguard.describe(again).mode == "no_grad"


def test_methods_returning_self_return_the_proxy() -> None:
    g = gradguard.guard(Recorder())
    assert g.to("cpu") is g
    assert g.float() is g
    assert g.train() is g
    assert g.eval() is g


def test_repr_shows_the_guard() -> None:
    g = gradguard.guard(nn.Linear(1, 1), mode="no_grad")
    assert repr(g).startswith("gradguard.guard(Linear(")
    assert "mode='no_grad'" in repr(g)


def test_deepcopy_guards_a_copy() -> None:
    g = gradguard.guard(nn.Linear(2, 2), mode="no_grad")
    c = copy.deepcopy(g)
    assert isinstance(c, gradguard.GuardedModule)
    assert c.__wrapped__ is not g.__wrapped__
    assert torch.equal(c.weight, g.weight)
    assert gradguard.describe(c).mode == "no_grad"
    shallow = copy.copy(g)
    assert shallow.__wrapped__ is g.__wrapped__


def test_pickle_and_torch_save_round_trip() -> None:
    g = gradguard.guard(nn.Linear(2, 2), mode="inference")
    back = pickle.loads(pickle.dumps(g))
    assert isinstance(back, gradguard.GuardedModule)
    assert torch.equal(back.weight, g.weight)
    buffer = io.BytesIO()
    torch.save(g, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert isinstance(loaded, gradguard.GuardedModule)
    assert gradguard.describe(loaded).mode == "inference"
    assert loaded(torch.ones(1, 2)).is_inference()


def test_guarded_module_as_argument_of_infer_switches_the_module() -> None:
    model = Recorder().train()
    g = gradguard.guard(model)

    @gradguard.infer
    def f(m: nn.Module) -> None:
        m(torch.ones(1, 3))

    f(g)
    assert model.seen[-1] == (*INFERENCE, False)
    assert model.training


def test_guard_of_module_whose_forward_needs_grad_uses_no_grad() -> None:
    class Saliency(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                x = x.clone().requires_grad_()
                (g,) = torch.autograd.grad((x**2).sum(), x)
            return g

    g = gradguard.guard(Saliency())
    assert gradguard.describe(g).mode == "no_grad"
    assert torch.equal(g(torch.ones(2)), torch.full((2,), 2.0))


def test_guard_modules_option_by_submodule_name() -> None:
    model = Recorder().train()
    g = gradguard.guard(model, modules=["dropout"])
    g(torch.ones(1, 3))
    assert model.seen[-1][2] is True  # only the dropout was switched
    assert model.dropout.training


@pytest.mark.parametrize("bad", [3, "model", lambda x: x])
def test_guard_rejects_what_is_not_a_module(bad: object) -> None:
    with pytest.raises(TypeError, match=r"guard\(\) takes an nn.Module.*@gradguard.infer"):
        gradguard.guard(bad)  # type: ignore[type-var]


def test_guard_rejects_unknown_method_and_submodule_names() -> None:
    with pytest.raises(ValueError, match="no method 'generate'"):
        gradguard.guard(nn.Linear(1, 1), methods=("generate",))
    with pytest.raises(ValueError, match="no attribute 'encoder'"):
        gradguard.guard(nn.Linear(1, 1), modules=["encoder"])


def test_unguard_of_plain_module_and_bad_input() -> None:
    m = nn.Linear(1, 1)
    assert gradguard.unguard(m) is m
    with pytest.raises(TypeError, match=r"unguard\(\) takes"):
        gradguard.unguard(3)  # type: ignore[type-var]


def test_modules_named_for_a_guard_are_looked_up_at_each_call() -> None:
    model = Recorder().train()
    g = gradguard.guard(model, modules=["dropout"])
    model.dropout = nn.Dropout(0.9)  # replaced after guarding
    seen = []
    model.dropout.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    g(torch.ones(1, 3))
    assert seen == [False]
    assert model.dropout.training


def test_named_method_returning_the_module_returns_the_proxy() -> None:
    class Stepper(Recorder):
        def step(self) -> Stepper:
            return self

    g = gradguard.guard(Stepper(), methods=("step",))
    assert g.step() is g
