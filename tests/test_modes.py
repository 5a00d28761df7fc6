"""Modes: inference, no_grad, auto (static look and run-time fallback), nesting."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import gradguard

from .test_decorate import INFERENCE, NO_GRAD, OUTSIDE, state


def grad_of_square(x: torch.Tensor) -> torch.Tensor:
    """A helper doing autograd work that the static look at its callers cannot see."""
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_()
        (leaf**2).sum().backward()
    assert leaf.grad is not None
    return leaf.grad


# --- auto: the static look --------------------------------------------------------------


def test_auto_picks_no_grad_for_code_using_enable_grad_and_autograd() -> None:
    @gradguard.infer
    def saliency(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = x.clone().requires_grad_()
            out = model(x).sum()
            (grad,) = torch.autograd.grad(out, x)
        return grad

    info = gradguard.describe(saliency)
    assert info.mode == "no_grad"
    assert "autograd" in info.reason
    grad = saliency(nn.Linear(3, 1), torch.ones(2, 3))
    assert grad.shape == (2, 3)
    assert state() == OUTSIDE


def test_auto_does_not_take_the_autograd_profiler_for_grad_use() -> None:
    """``torch.autograd.profiler.record_function`` labels a span; it needs no gradients."""
    from torch.nn.parallel import DistributedDataParallel

    from gradguard._modes import grad_need

    @gradguard.infer
    def labelled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autograd.profiler.record_function("predict"):
            return model(x)

    @gradguard.infer
    def labelled_saliency(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.autograd.profiler.record_function("saliency"), torch.enable_grad():
            x = x.clone().requires_grad_()
            (grad,) = torch.autograd.grad(model(x).sum(), x)
        return grad

    assert gradguard.describe(labelled).mode == "inference"
    assert gradguard.describe(labelled_saliency).mode == "no_grad"
    # DDP's forward runs in record_function: guard(ddp_model) runs in inference mode.
    assert grad_need(DistributedDataParallel.forward) is None


def test_autograd_imported_or_aliased_beside_the_profiler_is_a_grad_use() -> None:
    from gradguard._modes import grad_need

    def imported(x: torch.Tensor) -> torch.Tensor:
        from torch import autograd

        with autograd.profiler.record_function("jacobian"):
            return autograd.functional.jacobian(lambda t: t**2, x)  # type: ignore[no-any-return]

    def aliased(x: torch.Tensor) -> torch.Tensor:
        ag = torch.autograd
        with ag.profiler.record_function("grad"):
            return ag.grad(x.sum(), x)[0]

    assert grad_need(imported) == "autograd"
    assert grad_need(aliased) == "autograd"
    x = torch.ones(2)
    expected = torch.eye(2) * 2
    assert torch.equal(gradguard.infer(imported)(x), expected)  # under no_grad: the right answer


def test_auto_sees_grad_use_in_nested_code_objects() -> None:
    @gradguard.infer
    def outer(x: torch.Tensor) -> list[torch.Tensor]:
        def inner(t: torch.Tensor) -> torch.Tensor:
            t.requires_grad = True
            return t

        return [inner(t) for t in x]

    assert gradguard.describe(outer).mode == "no_grad"
    assert "requires_grad" in gradguard.describe(outer).reason


def test_auto_does_not_flag_reading_requires_grad() -> None:
    @gradguard.infer
    def f(x: torch.Tensor) -> bool:
        return x.requires_grad

    assert gradguard.describe(f).mode == "inference"


def test_pinned_modes_skip_the_static_look() -> None:
    @gradguard.infer(mode="inference")
    def f() -> None:
        with torch.enable_grad():
            pass

    assert gradguard.describe(f).mode == "inference"
    assert gradguard.describe(f).reason == "mode='inference' option"


# --- auto: the run-time fallback --------------------------------------------------------


def test_auto_falls_back_once_warns_once_and_retries() -> None:
    calls: list[tuple[bool, bool]] = []

    @gradguard.infer
    def f(x: torch.Tensor) -> torch.Tensor:
        calls.append(state())
        return grad_of_square(x)

    with pytest.warns(gradguard.FallbackWarning, match="needs autograd inside") as record:
        grad = f(torch.ones(3))
    assert torch.equal(grad, torch.full((3,), 2.0))
    assert calls == [INFERENCE, NO_GRAD]  # tried under inference mode, then again
    assert record[0].filename == __file__  # points at the user's line
    info = gradguard.describe(f)
    assert info.mode == "no_grad"
    assert "fell back" in info.reason and "does not require grad" in info.reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        f(torch.ones(3))  # no second warning, no retry
    assert calls[-1] == NO_GRAD and len(calls) == 3


def test_retry_false_reraises_but_switches_for_next_call() -> None:
    @gradguard.infer(retry=False)
    def f(x: torch.Tensor) -> torch.Tensor:
        return grad_of_square(x)

    with (
        pytest.warns(gradguard.FallbackWarning, match="lets the error through"),
        pytest.raises(RuntimeError, match="does not require grad"),
    ):
        f(torch.ones(3))
    assert gradguard.describe(f).mode == "no_grad"
    assert torch.equal(f(torch.ones(3)), torch.full((3,), 2.0))


def test_pinned_inference_mode_never_falls_back() -> None:
    @gradguard.infer(mode="inference")
    def f(x: torch.Tensor) -> torch.Tensor:
        return grad_of_square(x)

    with pytest.raises(RuntimeError, match="does not require grad"):
        f(torch.ones(3))
    assert gradguard.describe(f).mode == "inference"


def test_unrelated_runtime_errors_do_not_fall_back() -> None:
    @gradguard.infer
    def f() -> None:
        raise RuntimeError("CUDA out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        f()
    assert gradguard.describe(f).mode == "inference"


@pytest.mark.parametrize(
    "message",
    [
        "Inference tensors cannot be saved for backward. To work around ...",
        "Inplace update to inference tensor outside InferenceMode is not allowed",
        "Setting requires_grad=True on inference tensor outside InferenceMode is not allowed.",
        "Inference tensors do not track version counter.",
    ],
)
def test_each_inference_tensor_error_triggers_the_fallback(message: str) -> None:
    attempts: list[bool] = []

    @gradguard.infer
    def f() -> str:
        attempts.append(torch.is_inference_mode_enabled())
        if torch.is_inference_mode_enabled():
            raise RuntimeError(message)
        return "ok"

    with pytest.warns(gradguard.FallbackWarning):
        assert f() == "ok"
    assert attempts == [True, False]


def test_generator_falls_back_before_first_value() -> None:
    @gradguard.infer
    def gen(x: torch.Tensor) -> Iterator[torch.Tensor]:
        yield grad_of_square(x)

    with pytest.warns(gradguard.FallbackWarning, match="runs it again"):
        assert torch.equal(next(gen(torch.ones(2))), torch.full((2,), 2.0))
    assert gradguard.describe(gen).mode == "no_grad"


def test_generator_failing_after_a_value_switches_for_next_call() -> None:
    @gradguard.infer
    def gen(x: torch.Tensor) -> Iterator[torch.Tensor]:
        yield x
        yield grad_of_square(x)

    g = gen(torch.ones(2))
    next(g)
    with (
        pytest.warns(gradguard.FallbackWarning, match="lets the error through"),
        pytest.raises(RuntimeError),
    ):
        next(g)
    assert gradguard.describe(gen).mode == "no_grad"
    assert len(list(gen(torch.ones(2)))) == 2


# --- nesting ----------------------------------------------------------------------------


def test_no_grad_target_inside_inference_block_can_compute_gradients() -> None:
    @gradguard.infer(mode="no_grad")
    def inner(x: torch.Tensor) -> torch.Tensor:
        assert state() == NO_GRAD  # inference mode was left, not just grad turned off
        return grad_of_square(x)

    with torch.inference_mode():
        grad = inner(torch.ones(3))
        assert state() == INFERENCE
    assert torch.equal(grad, torch.full((3,), 2.0))
    assert not grad.is_inference()


def test_no_grad_target_inside_inference_block_says_why_inference_inputs_fail() -> None:
    @gradguard.infer(mode="no_grad")
    def inner(x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            w = torch.ones(3, requires_grad=True)
            return (w * x).sum()  # x is an inference tensor from the outer block

    with torch.inference_mode():
        x = torch.ones(3)
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
            inner(x)


def test_inference_target_inside_no_grad_and_inside_inference() -> None:
    @gradguard.infer(mode="inference")
    def f() -> tuple[bool, bool]:
        return state()

    with torch.no_grad():
        assert f() == INFERENCE
        assert state() == NO_GRAD
    with torch.inference_mode():
        assert f() == INFERENCE
        assert state() == INFERENCE
    with torch.inference_mode(False):
        assert f() == INFERENCE


def test_no_grad_target_inside_no_grad_keeps_grad_off_after() -> None:
    @gradguard.infer(mode="no_grad")
    def f() -> tuple[bool, bool]:
        return state()

    with torch.no_grad():
        assert f() == NO_GRAD
        assert state() == NO_GRAD
