"""A helper module with its own global model, for the run-time net's tests.

A function decorated elsewhere that calls ``run_helper`` reaches this model only at run
time: no static look at the decorated function's code can see it.
"""

from __future__ import annotations

import torch
from torch import nn

HELPER_MODEL = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5))


def run_helper(x: torch.Tensor) -> torch.Tensor:
    return HELPER_MODEL(x)
