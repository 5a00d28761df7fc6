"""The eval switch: every submodule gets its own flag back; overrides are honoured."""

from __future__ import annotations

import torch
from torch import nn

import gradguard
from gradguard import _eval


class FrozenBNNet(nn.Module):
    """The classic override: train() keeps the BatchNorm frozen in eval."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(4, 2))
        self.calls: list[bool] = []

    def train(self, mode: bool = True) -> FrozenBNNet:
        self.calls.append(mode)
        super().train(mode)
        self.bn.eval()
        return self


def flags(model: nn.Module) -> dict[str, bool]:
    return {name: m.training for name, m in model.named_modules()}


def test_each_submodule_gets_its_own_flag_back() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Dropout(0.1))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    before = flags(model)
    seen = []
    with gradguard.scope(model):
        seen = [m.training for m in model.modules()]
    assert seen == [False] * 4
    assert flags(model) == before


def test_override_of_train_is_called_and_flags_still_exact() -> None:
    model = FrozenBNNet()
    model.train()
    model.head[0].eval()  # and one more module the override knows nothing of
    model.calls.clear()
    before = flags(model)
    with gradguard.scope(model):
        assert not any(flags(model).values())
    assert model.calls == [False, True]
    assert flags(model) == before


def test_fast_path_does_not_call_train_on_plain_modules() -> None:
    calls: list[bool] = []

    class Leaf(nn.Linear):
        pass  # no override: flags are set directly

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.leaf = Leaf(1, 1)

    model = Counting().train()
    original = nn.Module.train

    def spy(self: nn.Module, mode: bool = True) -> nn.Module:
        calls.append(mode)
        return original(self, mode)

    nn.Module.train = spy  # type: ignore[method-assign]
    try:
        with gradguard.scope(model):
            assert not model.leaf.training
    finally:
        nn.Module.train = original  # type: ignore[method-assign]
    assert calls == []
    assert model.training and model.leaf.training


def test_module_already_in_eval_is_not_held() -> None:
    model = nn.Sequential(nn.Linear(1, 1)).eval()
    handle = _eval.hold([model])
    assert (handle.taken, handle.switched, _eval.registry.held) == ([], 0, {})
    _eval.release(handle)
    assert _eval.registry.idle()


def test_nested_calls_on_one_module_switch_once() -> None:
    model = FrozenBNNet()
    model.train()
    model.calls.clear()

    @gradguard.infer
    def inner(m: nn.Module) -> bool:
        return m.training

    with gradguard.scope(model):
        assert inner(model) is False
        assert inner(model) is False
    assert model.calls == [False, True]
    assert _eval.registry.idle()


def test_overlapping_roots_restore_in_any_order() -> None:
    model = nn.Sequential(nn.Linear(1, 1), nn.Sequential(nn.Dropout(0.2))).train()
    sub = model[1]
    before = flags(model)
    outer = _eval.hold([model])  # as two threads would, one on the model, one on a part
    inner = _eval.hold([sub])
    _eval.release(outer)  # released out of order: sub is still held
    assert not sub.training and not sub[0].training
    _eval.release(inner)
    assert flags(model) == before
    assert _eval.registry.idle()


def test_new_submodule_added_in_training_mode_is_switched() -> None:
    model = nn.Sequential(nn.Linear(1, 1)).eval()
    with gradguard.scope(model):
        pass
    model.append(nn.Dropout(0.5))  # new modules start in training mode
    with gradguard.scope(model):
        assert not model[1].training
    assert model[1].training and not model[0].training


def test_none_submodules_are_skipped() -> None:
    model = nn.Module()
    model.register_module("missing", None)
    model.add_module("present", nn.Dropout(0.5))
    model.train()
    with gradguard.scope(model):
        assert not model.present.training
    assert model.present.training


def test_submodules_lists_each_parent_before_its_children() -> None:
    model = nn.Sequential(nn.Sequential(nn.Linear(1, 1)), nn.ReLU())
    found = _eval.submodules(model)
    assert found[0] is model
    assert found.index(model[0]) < found.index(model[0][0])
    assert len(found) == len(list(model.modules()))


def test_dropout_output_is_the_eval_output() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)).train()
    x = torch.randn(4, 8)
    guarded = gradguard.guard(model)
    out = guarded(x)
    model.eval()
    assert torch.equal(out, model(x))


def test_guarded_proxy_registered_inside_a_container_is_switched_through() -> None:
    inner = nn.Dropout(0.5)
    model = nn.Sequential(nn.Linear(2, 2), gradguard.guard(inner)).train()
    with gradguard.scope(model):
        assert not inner.training
    assert inner.training and model.training


def test_train_override_that_runs_guarded_code_does_not_deadlock() -> None:
    @gradguard.infer
    def peek(m: nn.Module) -> bool:
        return m.training

    class Calls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.part = nn.Linear(1, 1)
            self.seen: list[bool] = []

        def train(self, mode: bool = True) -> Calls:
            self.seen.append(peek(self.part))
            return super().train(mode)

    model = Calls().train()
    with gradguard.scope(model):
        assert not model.part.training
    assert model.training and model.part.training
    assert model.seen[-2:] == [False, False]  # peek saw the part in eval both ways
    assert _eval.registry.idle()


class Wrapper(nn.Module):
    """An overriding model holding another (a Hugging Face head over its base model)."""

    def __init__(self) -> None:
        super().__init__()
        self.base = FrozenBNNet()
        self.classifier = nn.Sequential(nn.Dropout(0.1), nn.Linear(2, 2))
        self.calls: list[bool] = []

    def train(self, mode: bool = True) -> Wrapper:
        self.calls.append(mode)
        return super().train(mode)


def test_a_nested_override_is_switched_by_its_ancestors_eval_once() -> None:
    """The outer class's eval() runs the inner one's already: calling the inner one again
    would walk its subtree once more per level of nesting (3x the cost of model.eval()
    for a Hugging Face model). Flags inside and after stay exact."""
    model = Wrapper().train()
    model.base.head[0].eval()  # a module the overrides know nothing of, frozen by hand
    model.calls.clear()
    model.base.calls.clear()
    before = flags(model)
    for _ in range(2):
        with gradguard.scope(model):
            assert not any(flags(model).values())
        assert flags(model) == before
    assert model.calls == [False, True] * 2  # the outer override, each way
    assert model.base.calls == [False, True] * 2  # the inner one, through the outer only
