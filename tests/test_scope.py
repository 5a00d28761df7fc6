"""gradguard.scope(): one eval switch and one mode for a whole block."""

from __future__ import annotations

import asyncio

import pytest
import torch
from torch import nn

import gradguard

from .test_decorate import INFERENCE, NO_GRAD, OUTSIDE, Recorder, state


class CountingTrain(Recorder):
    """Counts train() calls, to see how often the block switches the model."""

    def __init__(self) -> None:
        super().__init__()
        self.train_calls = 0

    def train(self, mode: bool = True) -> CountingTrain:
        self.train_calls += 1
        return super().train(mode)


def test_block_switches_once_for_many_batches() -> None:
    model = CountingTrain()
    model.train()
    model.train_calls = 0
    with gradguard.scope(model):
        for _ in range(5):
            model(torch.ones(1, 3))
    assert model.seen[-5:] == [(*INFERENCE, False)] * 5
    assert model.train_calls == 2  # into eval once, back once
    assert model.training and state() == OUTSIDE


def test_block_modes_and_exception() -> None:
    with gradguard.scope(mode="no_grad"):
        assert state() == NO_GRAD
    error = KeyError("x")
    model = Recorder().train()
    with pytest.raises(KeyError) as info, gradguard.scope(model):
        raise error
    assert info.value is error
    assert model.training and state() == OUTSIDE


def test_async_with() -> None:
    model = Recorder().train()

    async def main() -> tuple[bool, bool, bool]:
        async with gradguard.scope(model):
            return (*state(), model.training)

    assert asyncio.run(main()) == (*INFERENCE, False)
    assert model.training


def test_block_name_defaults_to_enclosing_function_and_counts_runs() -> None:
    def validate() -> gradguard.scope:
        with gradguard.scope() as block:
            return block

    first = validate()
    second = validate()
    info = gradguard.describe(second)
    assert info.name.endswith(
        ":test_block_name_defaults_to_enclosing_function_and_counts_runs.<locals>.validate"
    )
    assert info.kind == "scope"
    assert gradguard.describe(first).calls == info.calls == 2


def test_block_failing_for_autograd_lets_error_through_and_next_run_uses_no_grad() -> None:
    def run() -> tuple[bool, bool]:
        with gradguard.scope(name="needs-grad"):
            with torch.enable_grad():
                x = torch.ones(2, requires_grad=True)
                (x * 2).sum().backward()
            return state()

    with (
        pytest.warns(gradguard.FallbackWarning, match="lets the error through"),
        pytest.raises(RuntimeError),
    ):
        run()
    assert run() == NO_GRAD


def test_scope_cannot_be_entered_twice_at_once_but_can_be_reused() -> None:
    block = gradguard.scope(name="reused")
    with block, pytest.raises(RuntimeError, match="already entered"), block:
        pass
    with block:
        assert state() == INFERENCE
    assert state() == OUTSIDE


@pytest.mark.parametrize("bad", ["model", 3, [nn.Linear(1, 1)]])
def test_scope_rejects_what_is_not_a_module(bad: object) -> None:
    with pytest.raises(TypeError, match=r"scope\(\) takes nn.Module"):
        gradguard.scope(bad)  # type: ignore[arg-type]


def test_overlapping_async_blocks_in_two_tasks_leave_the_modes_as_they_were() -> None:
    async def first(entered: asyncio.Event, second_entered: asyncio.Event) -> None:
        async with gradguard.scope():
            entered.set()
            await second_entered.wait()  # exits while the second block is still open

    async def second(entered: asyncio.Event, second_entered: asyncio.Event) -> None:
        await entered.wait()
        async with gradguard.scope(mode="no_grad"):
            second_entered.set()
            await asyncio.sleep(0.01)

    async def main() -> tuple[bool, bool]:
        a, b = asyncio.Event(), asyncio.Event()
        await asyncio.gather(first(a, b), second(a, b))
        return state()

    assert asyncio.run(main()) == OUTSIDE
    assert state() == OUTSIDE
