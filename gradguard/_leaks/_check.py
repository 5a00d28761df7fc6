"""``gradguard.check_module``: the parameters and buffers of a model that are inference tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from ._registrations import inference_tensors

__all__ = ["Finding", "Findings", "check_module"]

ModuleTensorKind = Literal["parameter", "buffer"]


@dataclass(frozen=True)
class Finding:
    """A parameter or buffer of a module that is an inference tensor."""

    name: str
    kind: ModuleTensorKind
    fix: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} is an inference tensor: {self.fix}"


class Findings(list[Finding]):
    """What ``check_module`` found: a list, empty (and false) when the module is clean."""

    def __str__(self) -> str:
        if not self:
            return "no inference tensors among the module's parameters and buffers"
        return "\n".join(str(f) for f in self)


def check_module(module: nn.Module) -> Findings:
    """Return the parameters and buffers of ``module`` that are inference tensors.

    A model loaded or built under inference mode has inference tensors for parameters;
    its first optimizer step fails ('Inplace update to inference tensor outside
    InferenceMode'). Each finding names the tensor (``encoder.layer.0.bias``) and the fix.

    Example::

        findings = gradguard.check_module(model)
        assert not findings, str(findings)
    """
    given: Any = module  # typed as a module, but users pass anything: check at run time
    if not isinstance(given, nn.Module):
        msg = (
            f"check_module() takes an nn.Module; got {type(given).__name__}. Pass the "
            "model itself (gradguard.unguard(g) for a guarded one works too)."
        )
        raise TypeError(msg)
    findings = Findings()
    fix_parameter = (
        "load or build the model outside torch.inference_mode(), or replace it with "
        "nn.Parameter(p.clone()) made outside inference mode"
    )
    fix_buffer = "re-register it with buffer.clone() made outside inference mode"
    for found in inference_tensors(module).values():  # lazy parameters: not yet
        kind: ModuleTensorKind = "parameter" if found.kind == "parameter" else "buffer"
        fix = fix_parameter if kind == "parameter" else fix_buffer
        findings.append(Finding(found.name, kind, fix))
    return findings
