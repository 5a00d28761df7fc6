"""@gradguard.infer on every kind of callable: binding, metadata, generators, coroutines."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import torch
from torch import nn

import gradguard


def state() -> tuple[bool, bool]:
    """(grad enabled, inference mode enabled) as seen right now."""
    return torch.is_grad_enabled(), torch.is_inference_mode_enabled()


INFERENCE = (False, True)
NO_GRAD = (False, False)
OUTSIDE = (True, False)


class Recorder(nn.Module):
    """A module that records the modes and its own flag each time it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.dropout = nn.Dropout(0.5)
        self.seen: list[tuple[bool, bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((*state(), self.training))
        return self.dropout(self.linear(x))


# --- binding cases, each against its undecorated original ------------------------------


class Predictor:
    """The common pattern: a plain object holding a model in an attribute."""

    def __init__(self) -> None:
        self.model = Recorder()

    def plain(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    guarded = gradguard.infer(plain)

    @classmethod
    def cls_plain(cls, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    @gradguard.infer
    @classmethod
    def cls_outer(cls, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    @classmethod
    @gradguard.infer
    def cls_inner(cls, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    @staticmethod
    def static_plain(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    @gradguard.infer
    @staticmethod
    def static_outer(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)

    @staticmethod
    @gradguard.infer
    def static_inner(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x)


class CallableObject:
    def __init__(self) -> None:
        self.model = Recorder()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_instance_method_switches_model_attribute_and_matches_original() -> None:
    p = Predictor()
    p.model.train()
    x = torch.ones(2, 3)
    out = p.guarded(x)
    assert p.model.seen[-1] == (*INFERENCE, False)
    assert p.model.training
    p.model.eval()
    assert torch.equal(out, p.plain(x))


@pytest.mark.parametrize("name", ["cls_outer", "cls_inner", "static_outer", "static_inner"])
@pytest.mark.parametrize("via", ["class", "instance"])
def test_classmethods_and_staticmethods(name: str, via: str) -> None:
    model = Recorder().train()
    owner: Any = Predictor if via == "class" else Predictor()
    x = torch.ones(2, 3)
    out = getattr(owner, name)(model, x)
    assert model.seen[-1] == (*INFERENCE, False)
    assert model.training
    assert out.is_inference()
    plain = "cls_plain" if name.startswith("cls") else "static_plain"
    model.eval()
    assert torch.equal(out, getattr(owner, plain)(model, x))


def test_callable_object_switches_its_module_attributes() -> None:
    obj = CallableObject()
    obj.model.train()
    guarded = gradguard.infer(obj)
    guarded(torch.ones(1, 3))
    assert obj.model.seen[-1] == (*INFERENCE, False)
    assert obj.model.training


def test_bound_method_decorated_directly() -> None:
    p = Predictor()
    p.model.train()
    guarded = gradguard.infer(p.plain)
    guarded(torch.ones(1, 3))
    assert p.model.seen[-1] == (*INFERENCE, False)


def test_module_method_switches_self() -> None:
    class Net(Recorder):
        @gradguard.infer
        def predict(self, x: torch.Tensor) -> torch.Tensor:
            return self(x).argmax(-1)

    net = Net().train()
    net.predict(torch.ones(2, 3))
    assert net.seen[-1] == (*INFERENCE, False)
    assert net.training


def test_module_in_keyword_argument_is_switched() -> None:
    @gradguard.infer
    def run(x: torch.Tensor, *, model: nn.Module) -> torch.Tensor:
        return model(x)

    model = Recorder().train()
    run(torch.ones(1, 3), model=model)
    assert model.seen[-1] == (*INFERENCE, False)


def test_metadata_signature_and_wrapped_are_preserved() -> None:
    def predict(model: nn.Module, x: torch.Tensor, *, k: int = 1) -> torch.Tensor:
        """Predict things."""
        return model(x)

    guarded = gradguard.infer(predict)
    assert guarded.__name__ == "predict"
    assert guarded.__qualname__ == predict.__qualname__
    assert guarded.__doc__ == "Predict things."
    assert guarded.__wrapped__ is predict
    assert inspect.signature(guarded) == inspect.signature(predict)
    assert guarded.__annotations__ == predict.__annotations__


def test_options_form_and_bare_form_are_the_same_decorator() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    bare = gradguard.infer(f)
    called = gradguard.infer()(f)
    assert gradguard.describe(bare).policy == gradguard.describe(called).policy
    assert bare(torch.ones(1)).is_inference()
    assert called(torch.ones(1)).is_inference()


def test_redecorating_replaces_options_instead_of_nesting() -> None:
    def f() -> tuple[bool, bool]:
        return state()

    twice = gradguard.infer(mode="no_grad")(gradguard.infer(f))
    assert twice.__wrapped__ is f
    assert twice() == NO_GRAD


def test_functools_partial_and_lambda() -> None:
    model = Recorder().train()
    guarded = gradguard.infer(functools.partial(lambda m, x: m(x), model))
    guarded(torch.ones(1, 3))
    assert model.seen[-1] == (*INFERENCE, False)


# --- modes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected"), [("auto", INFERENCE), ("inference", INFERENCE), ("no_grad", NO_GRAD)]
)
def test_modes(mode: str, expected: tuple[bool, bool]) -> None:
    @gradguard.infer(mode=mode)  # type: ignore[call-overload]
    def f() -> tuple[bool, bool]:
        return state()

    assert f() == expected
    assert state() == OUTSIDE


def test_exception_propagates_unchanged_and_state_comes_back() -> None:
    error = ValueError("boom")
    model = Recorder().train()
    model.linear.eval()

    @gradguard.infer
    def f(m: nn.Module) -> None:
        raise error

    with pytest.raises(ValueError) as info:
        f(model)
    assert info.value is error
    assert state() == OUTSIDE
    assert model.training and not model.linear.training and model.dropout.training


def test_eval_false_leaves_modules_alone() -> None:
    model = Recorder().train()
    gradguard.infer(eval=False)(lambda m: m(torch.ones(1, 3)))(model)
    assert model.seen[-1] == (*INFERENCE, True)


def test_explicit_modules_by_parameter_name_and_object() -> None:
    a, b, c = Recorder().train(), Recorder().train(), Recorder().train()

    @gradguard.infer(modules=["first", c])
    def f(first: nn.Module, second: nn.Module) -> None:
        first(torch.ones(1, 3))
        second(torch.ones(1, 3))
        c(torch.ones(1, 3))

    f(a, b)
    assert a.seen[-1][2] is False
    assert b.seen[-1][2] is True  # not named: left in training
    assert c.seen[-1][2] is False
    assert a.training and b.training and c.training


def test_explicit_modules_by_attribute_name() -> None:
    class Holder:
        def __init__(self) -> None:
            self.encoder = Recorder().train()
            self.other = Recorder().train()

        @gradguard.infer(modules=["encoder"])
        def run(self) -> None:
            self.encoder(torch.ones(1, 3))
            self.other(torch.ones(1, 3))

    h = Holder()
    h.run()
    assert h.encoder.seen[-1][2] is False
    assert h.other.seen[-1][2] is True


# --- generators -------------------------------------------------------------------------


def test_generator_mode_only_while_body_runs() -> None:
    model = Recorder().train()
    inside: list[tuple[bool, bool, bool]] = []

    @gradguard.infer
    def stream(m: nn.Module, n: int) -> Iterator[torch.Tensor]:
        for _ in range(n):
            inside.append((*state(), m.training))
            yield m(torch.ones(1, 3))

    outside = []
    for out in stream(model, 3):
        outside.append((*state(), model.training))
        assert out.is_inference()
    assert inside == [(*INFERENCE, False)] * 3
    assert outside == [(*OUTSIDE, True)] * 3


def test_generator_send_throw_and_return_value() -> None:
    @gradguard.infer
    def echo() -> Iterator[Any]:
        received = []
        try:
            while True:
                value = yield state()
                if value == "stop":
                    return received
                received.append((value, state()))
        except KeyError:
            yield ("caught", state())

    gen = echo()
    assert next(gen) == INFERENCE
    assert gen.send(1) == INFERENCE
    assert gen.throw(KeyError("k")) == ("caught", INFERENCE)
    with pytest.raises(StopIteration):
        next(gen)

    gen = echo()
    next(gen)
    gen.send("a")
    with pytest.raises(StopIteration) as info:
        gen.send("stop")
    assert info.value.value == [("a", INFERENCE)]


def test_generator_closed_early_runs_cleanup_under_the_mode() -> None:
    cleanup: list[tuple[bool, bool]] = []

    @gradguard.infer
    def gen() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleanup.append(state())

    g = gen()
    next(g)
    g.close()
    assert cleanup == [INFERENCE]
    g = gen()
    next(g)
    del g
    gc.collect()
    assert cleanup == [INFERENCE, INFERENCE]
    assert state() == OUTSIDE


# --- coroutines and async generators ----------------------------------------------------


def test_async_function_holds_mode_across_awaits_but_not_in_other_tasks() -> None:
    inside: list[tuple[bool, bool]] = []
    other: list[tuple[bool, bool]] = []

    @gradguard.infer
    async def infer_step() -> torch.Tensor:
        for _ in range(3):
            inside.append(state())
            await asyncio.sleep(0)
        return torch.ones(1) * 2

    async def bystander() -> None:
        for _ in range(6):
            other.append(state())
            await asyncio.sleep(0)

    async def main() -> torch.Tensor:
        result, _ = await asyncio.gather(infer_step(), bystander())
        return result

    result = asyncio.run(main())
    assert inspect.iscoroutinefunction(infer_step)
    assert result.is_inference()
    assert inside == [INFERENCE] * 3
    assert other == [OUTSIDE] * 6


def test_torch_decorator_on_async_def_applies_nothing_which_is_why_gradguard_steps() -> None:
    @torch.inference_mode()
    async def torch_guarded() -> bool:
        return torch.is_inference_mode_enabled()

    @gradguard.infer
    async def ours() -> bool:
        return torch.is_inference_mode_enabled()

    assert asyncio.run(torch_guarded()) is False
    assert asyncio.run(ours()) is True


def test_cancelled_coroutine_restores_state_and_sees_cancellation_under_mode() -> None:
    seen: list[tuple[bool, bool]] = []
    model = Recorder().train()

    @gradguard.infer
    async def slow(m: nn.Module) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append(state())
            raise

    async def main() -> None:
        task = asyncio.create_task(slow(model))
        await asyncio.sleep(0)
        assert model.training  # suspended: no one holds it
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert seen == [INFERENCE]
    assert model.training
    assert state() == OUTSIDE


def test_async_generator() -> None:
    inside: list[tuple[bool, bool]] = []

    @gradguard.infer
    async def tokens(n: int) -> AsyncIterator[int]:
        for i in range(n):
            inside.append(state())
            await asyncio.sleep(0)
            yield i

    async def main() -> list[tuple[int, tuple[bool, bool]]]:
        return [(i, state()) async for i in tokens(3)]

    assert inspect.isasyncgenfunction(tokens)
    assert asyncio.run(main()) == [(i, OUTSIDE) for i in range(3)]
    assert inside == [INFERENCE] * 3


def test_async_generator_closed_early_cleans_up_under_mode() -> None:
    cleanup: list[tuple[bool, bool]] = []

    @gradguard.infer
    async def agen() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            cleanup.append(state())

    async def main() -> None:
        g = agen()
        assert await g.__anext__() == 1
        await g.aclose()

    asyncio.run(main())
    assert cleanup == [INFERENCE]


# --- outputs ----------------------------------------------------------------------------


def test_outputs_clone_returns_ordinary_tensors_usable_in_autograd() -> None:
    model = nn.Linear(3, 3)

    @gradguard.infer(outputs="clone")
    def teacher(x: torch.Tensor) -> dict[str, Any]:
        out = model(x)
        return {"logits": out, "pair": (out, [out * 2]), "n": 3}

    result = teacher(torch.ones(2, 3))
    assert not result["logits"].is_inference()
    assert not result["pair"][1][0].is_inference()
    assert result["n"] == 3
    student = nn.Linear(3, 3)
    loss = nn.functional.mse_loss(student(torch.ones(2, 3)), result["logits"])
    loss.backward()  # would raise with an inference tensor
    assert student.weight.grad is not None


def test_outputs_keep_returns_inference_tensors() -> None:
    out = gradguard.infer(lambda: torch.ones(2) * 2)()
    assert out.is_inference()


@gradguard.infer
def module_level(x: torch.Tensor) -> torch.Tensor:
    return x * 2


def test_decorated_function_pickles_by_reference_and_copies_as_itself() -> None:
    import copy
    import pickle

    assert pickle.loads(pickle.dumps(module_level)) is module_level
    assert copy.deepcopy(module_level) is module_level
    assert copy.copy(module_level) is module_level


def test_outputs_clone_leaves_a_tuple_subclass_it_cannot_rebuild() -> None:
    class Pair(tuple):  # type: ignore[type-arg]
        def __new__(cls, a: Any, b: Any) -> Pair:
            return super().__new__(cls, (a, b))

    out = gradguard.infer(outputs="clone")(lambda: Pair(torch.ones(1), 2))()
    assert isinstance(out, Pair) and out[1] == 2
