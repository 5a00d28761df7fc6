"""``watch_leaks(level="strict")``: check every torch operation of a block."""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .._outputs import shallow_tensors
from ._levels import level
from ._registry import origin_of, sentinel
from ._reports import report_op

__all__ = ["Strict", "is_in_place"]

_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_inference_enabled = torch.is_inference_mode_enabled
_origins = sentinel.origins  # the very dict: read on every operation, never rebound

# The in-place forms whose names do not end in "_": `t[i] = v` reaches the mode as
# __setitem__, `t += v` as __iadd__. Each updates its first argument.
_DUNDER_IN_PLACE = frozenset(
    {
        "__setitem__",
        "__iadd__",
        "__isub__",
        "__imul__",
        "__imatmul__",
        "__itruediv__",
        "__ifloordiv__",
        "__imod__",
        "__ipow__",
        "__iand__",
        "__ior__",
        "__ixor__",
        "__ilshift__",
        "__irshift__",
    }
)


def is_in_place(name: str) -> bool:
    """Whether the torch operation ``name`` updates its first argument in place."""
    if name.endswith("__"):
        return name in _DUNDER_IN_PLACE
    return name.endswith("_")


class Strict(TorchFunctionMode):
    """A function mode sees ``F.mse_loss(a, teacher_out)``, ``a * teacher_out`` and
    ``cache[i] = v`` too, which no module boundary does. It costs a Python call per
    operation: for tests and debugging.
    """

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if _origins and _grad_enabled() and not _inference_enabled():
            for value in args:  # the usual op: no inference tensor among its inputs
                if isinstance(value, _Tensor):
                    if value.is_inference():
                        _check_op(func, args, kwargs)
                        break
                elif isinstance(value, (list, tuple, dict)):
                    _check_op(func, args, kwargs)  # tensors inside: the full look
                    break
            else:
                if kwargs:
                    _check_op(func, args, kwargs)
        return func(*args, **(kwargs or {}))


def _check_op(func: Any, args: Any, kwargs: Any) -> None:
    """Report the first gradguard-made inference tensor an operation gets, if it leaks."""
    tensors = [*shallow_tensors(args), *shallow_tensors(kwargs.values())] if kwargs else None
    if tensors is None:
        tensors = list(shallow_tensors(args))
    if not any(t.is_inference() for t in tensors):
        return  # the usual op: nothing made under inference mode among its inputs
    current, action = level()  # an inner watch_leaks("off") turns it off
    if current == "off":
        return
    name = getattr(func, "__name__", str(func))
    in_place = is_in_place(name)
    if in_place:
        # Only the tensor updated matters (buf.copy_(t) is how one leaves inference mode,
        # and is fine).
        suspects = list(shallow_tensors(args[:1]))
    else:
        suspects = tensors if any(t.requires_grad for t in tensors) else []
    for tensor in suspects:
        origin = origin_of(tensor) if tensor.is_inference() else None
        if origin is not None:
            report_op(origin, f"torch operation {name}", action, in_place=in_place)
            return
