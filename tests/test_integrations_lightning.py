"""gradguard inside PyTorch Lightning: a ``predict_step`` decorated with ``@gradguard.infer``.

``Trainer.predict`` switches the module to eval and runs its loop under
``torch.inference_mode()`` (``Trainer(inference_mode=False)``: ``torch.no_grad()``), and
puts the training flags back after a loop that succeeded. These tests pin down what
happens when a guarded ``predict_step`` runs inside that loop, on the CPU.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import gradguard
from gradguard.testing import capture_events

L = pytest.importorskip(
    "lightning",
    reason="lightning is not installed; pip install -e '.[integrations]' (or '.[test]')",
)

# Lightning's own use of a torch pytree API that torch has deprecated: not ours to fix.
pytestmark = pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)`")

X = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))


class Net(L.LightningModule):
    """A small model with Dropout, and a BatchNorm frozen in eval by the tests."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5))
        self.head = nn.Linear(8, 2)
        self.seen: list[tuple[bool, bool, bool]] = []  # (any module training, inference, grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # type: ignore[no-any-return]

    def note(self) -> None:
        training = any(m.training for m in self.modules())
        self.seen.append((training, torch.is_inference_mode_enabled(), torch.is_grad_enabled()))


class Predictor(Net):
    @gradguard.infer
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.note()
        return self(batch[0])  # type: ignore[no-any-return]


class Saliency(Net):
    @gradguard.infer
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """The gradient of the summed outputs with respect to the input: needs autograd."""
        self.note()
        with torch.enable_grad():
            x = batch[0].clone().requires_grad_()
            (grad,) = torch.autograd.grad(self(x).sum(), x)
        return grad


class UnguardedSaliency(Net):
    predict_step = Saliency.predict_step.__wrapped__  # the same code, not decorated


class Teacher(Net):
    @gradguard.infer(outputs="clone")
    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch[0])  # type: ignore[no-any-return]


def predict(model: Net, *, inference_mode: bool) -> list[torch.Tensor]:
    """``Trainer.predict`` over two batches of three, the model in training mode before
    it, its BatchNorm frozen in eval."""
    model.train()
    model.body[1].eval()
    trainer = L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        inference_mode=inference_mode,
    )
    loader = DataLoader(TensorDataset(X), batch_size=3)
    return trainer.predict(model, loader)  # type: ignore[return-value]


def assert_flags_back(model: Net) -> None:
    flags = {name: m.training for name, m in model.named_modules()}
    assert flags == {name: name != "body.1" for name in flags}
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


@pytest.mark.parametrize("inference_mode", [True, False], ids=["inference_mode", "no_grad"])
def test_predict_step_runs_in_eval_under_inference_mode_whatever_the_trainer_says(
    inference_mode: bool,
) -> None:
    model = Predictor()
    with capture_events() as events:
        predictions = predict(model, inference_mode=inference_mode)
    # Inside: Lightning has switched every module to eval; gradguard's mode is on even
    # where the trainer chose no_grad, so the predictions are inference tensors both ways.
    assert model.seen == [(False, True, False)] * 2
    assert [p.is_inference() for p in predictions] == [True, True]
    assert [(e["target"], e["kind"], e["mode"], e["status"]) for e in events] == [
        (f"{__name__}:Predictor.predict_step", "function", "inference", "ok")
    ] * 2
    # Lightning switched the modules before gradguard looked: gradguard switched none.
    assert [(e["eval_switched"], e["training_modules"], e["grad_recorded"]) for e in events] == [
        (0, 0, False)
    ] * 2
    with torch.inference_mode():
        expected = model.eval()(X)
    model.train()
    model.body[1].eval()
    torch.testing.assert_close(torch.cat(predictions), expected)
    predict(model, inference_mode=inference_mode)  # and once more, to check flags after it
    assert_flags_back(model)


@pytest.mark.parametrize("inference_mode", [True, False], ids=["inference_mode", "no_grad"])
def test_predict_step_needing_autograd_runs_even_under_the_trainers_inference_mode(
    inference_mode: bool,
) -> None:
    model = Saliency()
    with capture_events() as events:
        grads = predict(model, inference_mode=inference_mode)
    # Auto mode saw enable_grad/autograd in the code and runs it under no_grad, leaving
    # Lightning's inference mode for the call, so that enable_grad() inside records.
    assert gradguard.describe(Saliency.predict_step).mode == "no_grad"
    assert model.seen == [(False, False, False)] * 2
    assert [(e["mode"], e["fallback"], e["status"]) for e in events] == [
        ("no_grad", False, "ok")
    ] * 2
    assert [g.is_inference() for g in grads] == [False, False]
    model.eval()
    x = X.clone().requires_grad_()
    (expected,) = torch.autograd.grad(model(x).sum(), x)
    torch.testing.assert_close(torch.cat(grads), expected)
    model.train()
    model.body[1].eval()
    assert_flags_back(model)


def test_without_gradguard_the_same_predict_step_fails_under_inference_mode() -> None:
    model = UnguardedSaliency()
    with pytest.raises(RuntimeError, match="does not require grad"):
        predict(model, inference_mode=True)
    assert not model.training  # Lightning leaves the model in eval after a failed loop
    assert len(predict(model, inference_mode=False)) == 2  # Lightning's own way out


def test_outputs_clone_gives_predictions_a_training_step_can_use() -> None:
    teacher = Teacher()
    targets = torch.cat(predict(teacher, inference_mode=True))
    assert not targets.is_inference()
    student = nn.Linear(4, 2)
    loss = F.mse_loss(student(X), targets)
    loss.backward()  # inference tensors here would fail: cannot be saved for backward
    assert student.weight.grad is not None
    assert_flags_back(teacher)
