"""Distillation: a guarded teacher's outputs in the student's training step, and the fix.

A guarded teacher runs under ``torch.inference_mode()``, so what it returns are inference
tensors. Fed to the student's loss while autograd records the training step, torch fails
("Inference tensors cannot be saved for backward") and says nothing of where the tensor
came from. gradguard remembers which guarded call made each inference tensor it returned,
and warns first, naming the teacher and the fix (``gradguard.LeakWarning``).

1. The loss as a module (``nn.MSELoss()``): the warning names the teacher, then torch's
   own error follows.
2. The loss as a function (``F.mse_loss``): only torch's error, unless the step runs
   inside ``gradguard.watch_leaks(level="strict")``, which checks every torch operation.
3. The fixes the warning gives (``outputs="clone"``, ``mode="no_grad"``, or
   ``.clone()`` outside inference mode), each running the training step cleanly.

Run: python examples/distillation_leak.py
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import gradguard


def mlp(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Dropout(0.1), nn.Linear(width, 4))


torch.manual_seed(0)
teacher_model = mlp(64)  # imagine it trained; its Dropout must be off when it teaches
student = mlp(8)
optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
criterion = nn.MSELoss()  # logit matching
x = torch.randn(32, 8)


def step(
    teacher: Callable[[torch.Tensor], torch.Tensor], loss_fn: Callable[..., torch.Tensor]
) -> float:
    """One training step of the student against the teacher's logits."""
    target = teacher(x)
    loss = loss_fn(student(x), target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


# Events are not this example's subject (see serving.py). With logging on, each leak
# found is also a `gradguard.leak` event, with the warning's message.
gradguard.configure(enabled=False)
teacher = gradguard.guard(teacher_model, name="teacher")

print("1. the teacher's logits in nn.MSELoss() during the student's training step")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        step(teacher, criterion)
    except RuntimeError as error:
        torch_error = str(error).split(".")[0]
leak = next(w for w in caught if issubclass(w.category, gradguard.LeakWarning))
print(f"   LeakWarning: {leak.message}")
print(f"   then torch's own error: RuntimeError: {torch_error}.")

print("\n2. the same step with F.mse_loss (a function, not a module)")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        step(teacher, F.mse_loss)
    except RuntimeError as error:
        torch_error = str(error).split(".")[0]
leaks = [w for w in caught if issubclass(w.category, gradguard.LeakWarning)]
print(f"   torch's error alone ({len(leaks)} LeakWarning): RuntimeError: {torch_error}.")
try:
    with gradguard.watch_leaks(level="strict", action="raise"):
        step(teacher, F.mse_loss)
except gradguard.LeakError as error:
    print(f"   inside watch_leaks(level='strict'): LeakError: {error}")

print("\n3. the fixes, each running the training step cleanly")
fixes: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "guard(teacher, outputs='clone')": gradguard.guard(
        teacher_model, name="teacher", outputs="clone"
    ),
    "guard(teacher, mode='no_grad')": gradguard.guard(
        teacher_model, name="teacher", mode="no_grad"
    ),
    "teacher(x).clone() outside inference mode": lambda x: teacher(x).clone(),
}
for label, fixed in fixes.items():
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradguard.LeakWarning)  # any leak would raise here
        losses = [step(fixed, criterion) for _ in range(20)]
    print(f"   {label:<42} 20 steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")

print(f"\nteacher back in training mode: {teacher_model.training}; student: {student.training}")
