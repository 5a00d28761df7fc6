"""The leak sentinel: say which guarded call made an inference tensor that meets autograd.

A tensor made under ``torch.inference_mode()`` fails later, deep in training code, with
errors that do not say where it came from ('Inference tensors cannot be saved for
backward'). gradguard made it, so gradguard remembers which target and which call did,
and names that call where torch fails on it, or warns first where a failure is certain.

The roles, one module each:

- ``_registry``: provenance keyed on storages, and the lifetime of the global hooks
  (``sentinel``, with ``reset()``);
- ``_boundary``: the global module hooks;
- ``_registrations``: parameters, buffers and submodules given to modules under
  inference mode;
- ``_looks``: the looks at a call's modules (calls 1, 2, 4, 8…);
- ``_scopes``: what a ``scope`` block leaves in its frame's locals;
- ``_reports``: warnings, errors, events and the note on torch's error;
- ``_strict``: ``watch_leaks(level="strict")``;
- ``_check``: ``check_module``.

Remembering costs a weak reference per storage a guarded call returns; nothing is kept
alive. The hooks are installed only while remembered storages live, so a program that
never keeps inference tensors pays nothing.
"""

from __future__ import annotations

from . import _boundary as _boundary  # binds the hooks to the sentinel
from ._blocks import watch_leaks
from ._check import Finding, Findings, check_module
from ._levels import level, remembering
from ._looks import look_after, look_before, looks
from ._registrations import landed, watch_registrations
from ._registry import Origin, origin_of, remember, sentinel
from ._reports import reset as _reset_reports
from ._scopes import LocalsBefore, locals_before, remember_locals

__all__ = [
    "Finding",
    "Findings",
    "LocalsBefore",
    "Origin",
    "check_module",
    "landed",
    "level",
    "locals_before",
    "look_after",
    "look_before",
    "origin_of",
    "remember",
    "remember_locals",
    "remembering",
    "reset",
    "sentinel",
    "unhook_idle",
    "watch_leaks",
    "watch_registrations",
]

unhook_idle = sentinel.unhook_idle


def reset() -> None:
    """Forget every remembered tensor, look and registration, and take the hooks out
    (for tests)."""
    sentinel.reset()
    looks.reset()
    landed.reset()
    _reset_reports()
