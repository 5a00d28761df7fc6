"""A training script with the two classic inference mistakes, for ``gradguard scan``.

``evaluate()`` runs under ``torch.no_grad()`` but forgot ``model.eval()``: Dropout drops
and BatchNorm normalizes with the batch's statistics (and overwrites its running ones).
``predict()``, the serving path, forgot ``torch.no_grad()``: every call records an
autograd graph that no backward ever uses, and keeps its activations while it lives.

Run it under the scan, which names both lines and what they cost:

    gradguard scan examples/unguarded_eval.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(512, 512), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(512, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # type: ignore[no-any-return]


def train(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def evaluate(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    correct = 0
    with torch.no_grad():  # but model.eval() was forgotten
        for x, y in batches:
            correct += int((model(x).argmax(1) == y).sum())
    return correct / sum(len(y) for _, y in batches)


def predict(model: nn.Module, x: torch.Tensor) -> list[int]:
    model.eval()
    logits = model(x)  # torch.no_grad() forgotten: a graph recorded for nothing
    return logits.argmax(1).tolist()


def main() -> None:
    torch.manual_seed(0)
    model = Classifier()
    batches = [(torch.randn(256, 64), torch.randint(0, 10, (256,))) for _ in range(4)]
    train(model, batches)
    print(f"accuracy: {evaluate(model, batches):.2f}")
    for _ in range(3):
        requests = torch.randn(1000, 64)
        print(f"predicted {len(predict(model, requests))} labels")


if __name__ == "__main__":
    main()
