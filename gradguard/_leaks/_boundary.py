"""The module boundary: the global hooks that see module calls while anything is remembered.

Two hooks, through ``gradguard._hooks``:

- a forward hook torch calls also when the forward raises (``always_call``): on that path
  it names the guarded call in torch's error about an inference tensor; on the ordinary
  path it returns at once (and takes the hooks out once nothing is remembered);
- a forward pre-hook, only while a call has left parameters or buffers as inference
  tensors in a module: it warns before such a module trains, where failure is certain.

Nothing but what the user asked for (``LeakError``, or a ``LeakWarning`` a filter made an
error) may escape into their forward.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from .._errors import LeakError
from ._registry import sentinel
from ._reports import internal_error, name_module_failure, report_own

__all__ = ["after_call", "before_call"]

_grad_enabled = torch.is_grad_enabled
_inference_enabled = torch.is_inference_mode_enabled
_exc_info = sys.exc_info
_is_compiling = getattr(torch.compiler, "is_compiling", None) or (
    lambda: torch._dynamo.is_compiling()  # torch < 2.3
)
_origins = sentinel.origins
_resident = sentinel.resident


def after_call(module: nn.Module, args: Any, result: Any) -> None:
    """Global forward hook (``always_call``), installed while anything is remembered.

    In code torch.compile traces it returns at once: a look at the registry would put
    guards on it, and the compiled module's own call, which runs eagerly, is seen anyway.
    """
    if _is_compiling():
        return
    if result is None:
        error = _exc_info()[1]
        if error is not None:  # torch's path for a forward that raised (or None returned
            # inside an except block of the caller): never change the hooks here, torch
            # is iterating them.
            try:
                name_module_failure(error, module, args)
            except Exception as failure:
                internal_error(failure)
            return
    if not _origins:
        sentinel.unhook_idle()  # the last remembered storage died: out of every call


def before_call(module: nn.Module, args: Any) -> None:
    """Global forward pre-hook, installed while a call's leftovers live in modules."""
    if _is_compiling():
        return
    try:
        _check_own_tensors(module, args)
    except (LeakError, Warning):
        raise  # what the user asked for: action="raise", or warnings made errors
    except Exception as error:
        internal_error(error)


def _check_own_tensors(module: nn.Module, args: Any) -> None:
    if not _resident:
        sentinel.unhook_idle()
        return
    if _inference_enabled() or not _grad_enabled():
        return  # inside guarded calls this is every module call
    # The usual module holds none of a call's leftovers: plain loops, no generator.
    for tensor in module._parameters.values():
        if id(tensor) in _resident:
            break
    else:
        for buffer in module._buffers.values():
            if id(buffer) in _resident:
                break
        else:
            return
    recorded = False
    for value in args:
        if isinstance(value, torch.Tensor) and value.requires_grad:
            recorded = True
            break
    if not recorded:
        # A module in training mode whose parameters are frozen records nothing.
        for parameter in module._parameters.values():
            if parameter is not None and parameter.requires_grad:
                recorded = True
                break
        compiled = module._modules.get("_orig_mod")  # torch.compile(model)'s wrapper
        if compiled is not None and not recorded:
            recorded = any(p.requires_grad for p in compiled.parameters())
    if recorded or module.training:
        _check_own(module, recorded)


def _check_own(module: nn.Module, recorded: bool) -> None:
    """Report a parameter or buffer of ``module`` that a guarded call left as an
    inference tensor, when the module is about to train with it.

    A parameter matters when autograd records the call; a buffer also when the module
    trains (BatchNorm updates its running stats in place). Inference tensors gradguard
    did not make are left to ``check_module``: torch may well never fail on them.
    """
    tables = ((module._parameters, "parameter", recorded), (module._buffers, "buffer", True))
    for table, kind, matters in tables:
        if not matters:
            continue
        for name, tensor in table.items():
            if tensor is None:
                continue
            origin = sentinel.resident_origin(tensor)
            # Still an inference tensor: `model.float()` outside inference mode mends it.
            if origin is not None and tensor.is_inference():
                report_own(module, kind, name, origin)
                return


sentinel.bind(before_call, after_call)
