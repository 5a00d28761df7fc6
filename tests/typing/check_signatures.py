"""Checked by mypy (tests/test_typing.py), never run: decorated signatures survive."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from torch import nn
from typing_extensions import assert_type

import gradguard


@gradguard.infer
def bare(x: int, y: str = "") -> float:
    return 1.0


@gradguard.infer(mode="no_grad", outputs="clone")
def with_options(x: int) -> list[int]:
    return [x]


@gradguard.infer
def stream(n: int) -> Iterator[int]:
    yield n


class Predictor:
    @gradguard.infer
    def predict(self, x: int) -> str:
        return str(x)


assert_type(bare(1), float)
assert_type(bare(1, y="a"), float)
assert_type(with_options(2), list[int])
assert_type(stream(3), Iterator[int])
assert_type(Predictor().predict(1), str)
assert_type(gradguard.guard(nn.Linear(1, 1)), nn.Linear)
assert_type(gradguard.unguard(gradguard.guard(nn.Linear(1, 1))), nn.Linear)
assert_type(gradguard.describe(bare).mode, Literal["inference", "no_grad"])

bare("not an int")  # type: ignore[arg-type]
with_options(1, 2)  # type: ignore[call-arg]
gradguard.infer(mode="fast")  # type: ignore[call-overload]


def scanned(model: nn.Module) -> int:
    with gradguard.scan() as findings:
        model(1)
    assert_type(findings, gradguard.ScanFindings)
    first = findings[0]
    assert_type(first, gradguard.ScanFinding)
    return first.bytes_max + findings.pending
