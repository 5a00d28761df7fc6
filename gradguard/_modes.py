"""Entering and leaving inference mode or no_grad as cheaply as torch allows.

``torch.inference_mode()`` as a decorator builds a Python context manager per call; the
C++ guard behind it, ``torch._C._InferenceMode``, entered directly costs a third of that.
Grad mode and inference mode are thread-local in torch, so a mode entered here holds
for the current thread until it is left; coroutines and generators must therefore
re-enter it on every resume (see ``_decorate``).
"""

from __future__ import annotations

import dis
import types
from collections.abc import Callable
from typing import Any, Protocol

import torch

__all__ = ["Holder", "enter", "fallback_reason", "grad_need", "leave", "restore"]

_InferenceMode = torch._C._InferenceMode
_is_inference_mode_enabled = torch.is_inference_mode_enabled
_is_grad_enabled = torch.is_grad_enabled
_set_grad_enabled = torch._C._set_grad_enabled


class Holder(Protocol):
    """Where a mode's token is kept between ``enter`` and ``leave`` (a step, say)."""

    token: Any


def enter(holder: Holder, *, inference: bool) -> None:
    """Enter inference mode (``inference=True``) or no_grad; keep in ``holder.token`` what
    ``leave`` needs to restore the modes as they were.

    The token is recorded before grad mode changes: an interrupt in between leaves nothing
    ``leave`` cannot see (the inference guard is a C++ object, whose creation is the change
    itself and which exits itself if dropped before it is recorded).

    no_grad inside an outer inference-mode block first leaves inference mode: otherwise
    ``torch.enable_grad()`` in the target would record nothing. ``_InferenceMode(False)``
    turns grad mode on (even inside no_grad), so grad mode is switched off after it.
    ``Target.call`` writes the same steps out in its own frame, with a local for the token.
    """
    if inference:
        holder.token = _InferenceMode(True)
    elif _is_inference_mode_enabled():
        holder.token = _InferenceMode(False)
        _set_grad_enabled(False)
    else:
        holder.token = _is_grad_enabled()
        _set_grad_enabled(False)


def leave(holder: Holder) -> None:
    """Restore the grad and inference mode that ``enter`` found. Idempotent."""
    token = holder.token
    if token is None:
        return
    restore(token)
    holder.token = None


def restore(token: Any) -> None:
    """Restore the modes a token records: the grad flag, or a guard's whole state."""
    if token is True or token is False:
        _set_grad_enabled(token)
    else:
        token.__exit__(None, None, None)  # a second exit does nothing


# Names whose presence in a target's code shows that it computes gradients inside:
# under inference mode they fail or silently record nothing.
_GRAD_NAMES = frozenset(
    {
        "enable_grad",
        "set_grad_enabled",
        "autograd",
        "backward",
        "requires_grad_",
        "vjp",
        "jvp",
        "jacrev",
        "jacfwd",
        "hessian",
    }
)


def _code_of(target: Any) -> types.CodeType | None:
    while True:
        if isinstance(target, types.CodeType):
            return target
        if isinstance(target, types.MethodType):
            target = target.__func__
        elif hasattr(target, "__wrapped__"):
            target = target.__wrapped__
        elif hasattr(target, "func") and callable(target.func):  # functools.partial
            target = target.func
        elif isinstance(target, types.FunctionType):
            return target.__code__
        elif callable(target) and not isinstance(target, type):
            call = type(target).__call__
            if isinstance(call, types.WrapperDescriptorType):
                return None
            target = call
        else:
            return None


def _profiles_only(code: types.CodeType) -> bool:
    """Whether every ``autograd`` in ``code`` is read as ``<...>.autograd.profiler``.

    ``DistributedDataParallel.forward`` runs in ``torch.autograd.profiler.record_function``:
    a profiler label, not a need for gradients. An ``autograd`` imported, stored, or read
    for anything but its ``profiler`` is a use of autograd.
    """
    instructions = list(dis.get_instructions(code))
    for instruction, following in zip(instructions, [*instructions[1:], None], strict=True):
        if instruction.argval != "autograd" or instruction.opcode not in dis.hasname:
            continue
        if (
            not instruction.opname.startswith("LOAD_")
            or following is None
            or following.opname not in ("LOAD_ATTR", "LOAD_METHOD")
            or following.argval != "profiler"
        ):
            return False
    return True


def _grad_need_in(code: types.CodeType) -> str | None:
    found = _GRAD_NAMES.intersection(code.co_names)
    if found == {"autograd"} and _profiles_only(code):
        found = frozenset()
    if found:
        return min(found)
    if "requires_grad" in code.co_names:
        for ins in dis.get_instructions(code):
            if ins.opname == "STORE_ATTR" and ins.argval == "requires_grad":
                return "requires_grad ="
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            found_inner = _grad_need_in(const)
            if found_inner is not None:
                return found_inner
    return None


def grad_need(*targets: Callable[..., Any]) -> str | None:
    """Return the first name in the targets' code that needs autograd, or ``None``.

    Looks at the code of the functions themselves and of the functions, lambdas and
    comprehensions nested in them; helpers they call are left to the run-time fallback.
    """
    for target in targets:
        code = _code_of(target)
        if code is not None:
            found = _grad_need_in(code)
            if found is not None:
                return found
    return None


# Messages of the errors a target raises under inference mode when it needs autograd.
_FALLBACK_MESSAGES = (
    "does not require grad and does not have a grad_fn",
    "Inference tensors cannot be saved for backward",
    "Inplace update to inference tensor outside InferenceMode",
    "Setting requires_grad=True on inference tensor",
    "Inference tensors do not track version counter",
)


def fallback_reason(error: BaseException) -> str | None:
    """Return the message of ``error`` if it shows that the code needs autograd."""
    if not isinstance(error, RuntimeError):
        return None
    message = str(error)
    if any(m in message for m in _FALLBACK_MESSAGES):
        return message.splitlines()[0] if message else type(error).__name__
    return None
