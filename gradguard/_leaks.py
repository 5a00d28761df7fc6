"""The leak sentinel: say which guarded call made an inference tensor that meets autograd.

A tensor made under ``torch.inference_mode()`` fails later, deep in training code, with
errors that do not say where it came from ('Inference tensors cannot be saved for
backward'). gradguard made it, so gradguard remembers which target and which call did,
and warns (or raises) at the user's line when such a tensor enters a module call that
autograd records.

Remembering costs a weak reference per inference tensor a guarded call returns; nothing
is kept alive. The module hook that checks calls is installed only while such tensors
are alive, and removed when the last one dies, so a program that never keeps inference
tensors pays nothing.
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ._config import LeakLevel, check_leak_level, current
from ._errors import LeakError, LeakWarning
from ._outputs import map_tensors, shallow_tensors
from ._stack import user_stacklevel

__all__ = ["Finding", "Findings", "check_module", "level", "remember", "watch_leaks"]

Level = LeakLevel
Action = Literal["warn", "raise"]
ACTIONS: tuple[Action, ...] = ("warn", "raise")

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


class _Watch(threading.local):
    """A ``watch_leaks`` block open in this thread overrides the configured level."""

    def __init__(self) -> None:
        self.stack: list[tuple[Level, Action]] = []


_watch = _Watch()


def level() -> tuple[Level, Action]:
    """The leak level and action in force in this thread."""
    if _watch.stack:
        return _watch.stack[-1]
    return current().leaks, "warn"


@contextmanager
def watch_leaks(level: Level = "boundary", action: Action = "warn") -> Iterator[None]:
    """Watch for leaks at ``level`` in this block, and warn or raise (``action``).

    Example::

        with gradguard.watch_leaks(action="raise"):
            train_step(student, teacher_out)   # LeakError names the target that made it
    """
    check_leak_level("level", level, block=True)
    if action not in ACTIONS:
        msg = f"action must be 'warn' or 'raise'; got {action!r}"
        raise ValueError(msg)
    _watch.stack.append((level, action))
    try:
        if level == "strict":
            with _Strict():
                yield
        else:
            yield
    finally:
        _watch.stack.pop()


class _Strict(TorchFunctionMode):
    """``watch_leaks(level="strict")``: check every torch operation of the block.

    A function mode sees ``F.mse_loss(a, teacher_out)`` and ``a * teacher_out`` too, which
    no module boundary does. It costs a Python call per operation: for tests and debugging.
    """

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if _origins and torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            current, action = level()  # an inner watch_leaks("off") turns it off
            if current != "off":
                name = getattr(func, "__name__", str(func))
                in_place = name.endswith("_") and not name.endswith("__")
                if in_place:
                    # Only the tensor updated matters (buf.copy_(t) is how one leaves
                    # inference mode, and is fine).
                    suspects = list(shallow_tensors(args[:1]))
                else:
                    tensors = [*shallow_tensors(args), *shallow_tensors(kwargs.values())]
                    recorded = any(t.requires_grad for t in tensors)
                    suspects = tensors if recorded else []
                for tensor in suspects:
                    origin = origin_of(tensor) if tensor.is_inference() else None
                    if origin is not None:
                        _report(origin, f"torch operation {name}", action, in_place)
                        break
        return func(*args, **kwargs)


# --- provenance ---------------------------------------------------------------------------


_Origin = tuple[str, int]  # (target, call): a tuple, built on every remembered tensor

_origins: dict[int, tuple[weakref.ref[torch.Tensor], _Origin]] = {}
# Reentrant: a weak reference's callback (_forget) runs wherever the collector frees a
# tensor, which may be inside this lock, in this very thread.
_lock = threading.RLock()
_hook: Any = None


def _forget(key: int, ref: weakref.ref[torch.Tensor]) -> None:
    # The hook is not removed here: a collection can run this callback while torch is
    # iterating over its global hooks. The hook removes itself at the next module call.
    with _lock:
        entry = _origins.get(key)
        if entry is not None and entry[0] is ref:
            del _origins[key]


def _unhook() -> None:
    global _hook
    with _lock:
        if not _origins and _hook is not None:
            _hook.remove()  # nothing left to watch for: module calls cost nothing again
            _hook = None


def _note(tensor: torch.Tensor, origin: _Origin) -> None:
    global _hook
    key = id(tensor)
    entry = (weakref.ref(tensor, functools.partial(_forget, key)), origin)
    with _lock:
        _origins[key] = entry
        if _hook is None:
            _hook = nn.modules.module.register_module_forward_pre_hook(_check_call)


def remember(result: Any, target: str, call: int) -> None:
    """Note that ``target``'s ``call`` made the inference tensors inside ``result``."""
    if type(result) is torch.Tensor:  # the common case, without walking containers
        if result.is_inference():
            _note(result, (target, call))
        return

    def note(tensor: torch.Tensor) -> torch.Tensor:
        if tensor.is_inference():
            _note(tensor, (target, call))
        return tensor

    map_tensors(result, note)


def origin_of(tensor: torch.Tensor) -> _Origin | None:
    """Which guarded call made ``tensor``, if gradguard remembers it."""
    entry = _origins.get(id(tensor))
    if entry is None or entry[0]() is not tensor:
        return None
    return entry[1]


# --- the boundary check -------------------------------------------------------------------


def _records(module: nn.Module, inputs: list[torch.Tensor]) -> bool:
    """Whether autograd records this module call: some parameter or input needs grad.

    A module in training mode whose parameters are frozen records nothing, and its
    containers are checked when their children run.
    """
    return any(t.requires_grad for t in inputs) or any(
        p is not None and p.requires_grad for p in module._parameters.values()
    )


def _check_call(module: nn.Module, args: Any) -> None:
    """Global forward pre-hook, installed only while gradguard-made inference tensors live."""
    if not _origins:
        _unhook()
        return
    if torch.is_inference_mode_enabled() or not torch.is_grad_enabled():
        return  # the cheap checks first: inside guarded calls this is every module call
    inputs = list(shallow_tensors(args))
    suspects = [t for t in inputs if t.is_inference()]
    if not suspects or not _records(module, inputs):
        return
    current, action = level()
    if current == "off":
        return
    for tensor in suspects:
        origin = origin_of(tensor)
        if origin is not None:
            _report(origin, f"the {type(module).__name__} module", action)
            return


def _report(origin: _Origin, receiver: str, action: Action, in_place: bool = False) -> None:
    target, call = origin
    if in_place:
        what = (
            f"is updated in place by {receiver} outside inference mode, which torch refuses "
            "('Inplace update to inference tensor outside InferenceMode')"
        )
    else:
        what = (
            f"enters {receiver} while autograd records a graph: torch fails ('Inference "
            "tensors cannot be saved for backward') wherever the graph must keep it"
        )
    msg = (
        f"gradguard: an inference tensor made by {target} (call {call}) {what}. Fix: give "
        "that target mode='no_grad' or outputs='clone', or use tensor.clone() made outside "
        "inference mode."
    )
    from ._telemetry import emit_leak

    emit_leak(target, call, receiver, msg)
    if action == "raise":
        raise LeakError(msg)
    warnings.warn(msg, LeakWarning, stacklevel=user_stacklevel(extra_dirs=(_TORCH_DIR,)))


# --- check_module -------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A parameter or buffer of a module that is an inference tensor."""

    name: str
    kind: Literal["parameter", "buffer"]
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
    for name, parameter in module.named_parameters():
        if parameter.is_inference():
            findings.append(Finding(name, "parameter", fix_parameter))
    for name, buffer in module.named_buffers():
        if buffer.is_inference():
            findings.append(Finding(name, "buffer", fix_buffer))
    return findings
