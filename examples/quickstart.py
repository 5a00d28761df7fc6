"""gradguard in one page: a function, a module and a block, each guarded in one line.

Run: python examples/quickstart.py
"""

from __future__ import annotations

import torch
from torch import nn

import gradguard


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5))
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def where(label: str, model: nn.Module) -> None:
    print(
        f"{label:<28} training={model.training!s:<5} "
        f"grad={torch.is_grad_enabled()!s:<5} inference_mode={torch.is_inference_mode_enabled()}"
    )


model = Classifier()  # a freshly built model is in training mode
x = torch.randn(8, 16)


# 1. A function: the modules among its arguments are switched to eval for the call.
@gradguard.infer
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    where("inside @gradguard.infer", model)
    return model(x).argmax(-1)


labels = predict(model, x)
where("after the call", model)

# 2. A module: calls through the proxy are guarded; everything else is the module.
guarded = gradguard.guard(model)
logits = guarded(x)
print("state_dict keys unchanged:", list(guarded.state_dict()) == list(model.state_dict()))
print("same answer as eval() + inference_mode:", torch.equal(logits.argmax(-1), labels))

# 3. A block: one eval switch and one mode for a whole loop.
with gradguard.scope(model):
    where("inside gradguard.scope", model)
    correct = sum(int(model(x).argmax(-1).eq(labels).sum()) for _ in range(3))
where("after the block", model)
print("correct:", correct, "of", 3 * len(labels))


# Auto mode runs code that needs autograd inside under no_grad instead.
@gradguard.infer
def saliency(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        x = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(model(x).max(-1).values.sum(), x)
    return grad


print("saliency runs under:", gradguard.describe(saliency).mode, tuple(saliency(model, x).shape))
