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
from ._outputs import each_tensor, shallow_tensors
from ._stack import user_stacklevel

__all__ = [
    "Finding",
    "Findings",
    "check_module",
    "level",
    "remember",
    "watch_leaks",
    "watching",
]

Level = LeakLevel
Action = Literal["warn", "raise"]
ACTIONS: tuple[Action, ...] = ("warn", "raise")

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_Tensor = torch.Tensor
_grad_enabled = torch.is_grad_enabled
_inference_enabled = torch.is_inference_mode_enabled


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


def watching() -> bool:
    """Whether leaks are watched in this thread (``level()`` without building a tuple)."""
    stack = _watch.stack
    return (stack[-1][0] if stack else current().leaks) != "off"


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
    in_place = name.endswith("_") and not name.endswith("__")
    if in_place:
        # Only the tensor updated matters (buf.copy_(t) is how one leaves inference mode,
        # and is fine).
        suspects = list(shallow_tensors(args[:1]))
    else:
        suspects = tensors if any(t.requires_grad for t in tensors) else []
    for tensor in suspects:
        origin = origin_of(tensor) if tensor.is_inference() else None
        if origin is not None:
            _report(origin, f"torch operation {name}", action, in_place)
            return


# --- provenance ---------------------------------------------------------------------------


_Origin = tuple[str, int]  # (target, call): a tuple, built on every remembered tensor

_origins: dict[int, tuple[weakref.ref[torch.Tensor], _Origin]] = {}
# Reentrant: a weak reference's callback (_forget) runs wherever the collector frees a
# tensor, which may be inside this lock, in this very thread.
_lock = threading.RLock()
_hook: Any = None  # the hook's handle while it is installed
_handle: Any = None  # registered once; installing again puts its entry back


def _forget(key: int, ref: weakref.ref[torch.Tensor]) -> None:
    # The last watched tensor gone, the hook goes at once, so module calls cost nothing
    # again. This may run inside a module call's hooks: Module.__call__ runs a copy of
    # the global hooks (torch 2), so taking one out of torch's dict here is safe.
    with _lock:
        entry = _origins.get(key)
        if entry is not None and entry[0] is ref:
            del _origins[key]
        if not _origins:
            _unhook()


def _unhook() -> None:
    global _hook
    with _lock:
        if not _origins and _hook is not None:
            _hook.remove()
            _hook = None


def _install() -> None:
    global _hook, _handle
    hooks = _handle.hooks_dict_ref() if _handle is not None else None
    if hooks is None:
        _handle = nn.modules.module.register_module_forward_pre_hook(_check_call)
    else:  # cheaper than a new registration, for programs whose outputs die young
        hooks[_handle.id] = _check_call
    _hook = _handle


def _note(tensor: torch.Tensor, origin: _Origin) -> None:
    key = id(tensor)
    entry = (weakref.ref(tensor, functools.partial(_forget, key)), origin)
    with _lock:
        _origins[key] = entry
        if _hook is None:
            _install()


def remember(result: Any, target: str, call: int) -> None:
    """Note that ``target``'s ``call`` made the inference tensors inside ``result``."""
    if type(result) is torch.Tensor:  # the common case, without walking containers
        if result.is_inference():
            _note(result, (target, call))
        return
    origin = (target, call)

    def note(tensor: torch.Tensor) -> bool:
        if tensor.is_inference():
            _note(tensor, origin)
        return False  # walk on

    each_tensor(result, note)


def origin_of(tensor: torch.Tensor) -> _Origin | None:
    """Which guarded call made ``tensor``, if gradguard remembers it."""
    entry = _origins.get(id(tensor))
    if entry is None or entry[0]() is not tensor:
        return None
    return entry[1]


# --- the boundary check -------------------------------------------------------------------


def _check_call(module: nn.Module, args: Any) -> None:
    """Global forward pre-hook, installed only while gradguard-made inference tensors live.

    It runs on every module call while installed, so the usual case (inside a guarded
    call, or a training step with nothing leaking) is decided in a few checks.
    """
    if not _origins:
        _unhook()
        return
    if _inference_enabled() or not _grad_enabled():
        return  # inside guarded calls this is every module call
    suspect = None
    recorded = False
    for value in args:  # one level into lists, tuples and dicts, as shallow_tensors
        if not isinstance(value, _Tensor):
            for tensor in shallow_tensors((value,)):
                recorded = recorded or tensor.requires_grad
                if suspect is None and tensor.is_inference():
                    suspect = tensor
        else:
            recorded = recorded or value.requires_grad
            if suspect is None and value.is_inference():
                suspect = value
    if not recorded:
        # A module in training mode whose parameters are frozen records nothing; its
        # containers are checked when their children run.
        for parameter in module._parameters.values():
            if parameter is not None and parameter.requires_grad:
                recorded = True
                break
    if recorded or module.training:
        _check_own(module)  # about to train: its own parameters and buffers first
    if suspect is None or not recorded:
        return
    current, action = level()
    if current == "off":
        return
    origin = origin_of(suspect)
    if origin is None:  # an inference tensor gradguard did not make: look for one it did
        for tensor in shallow_tensors(args):
            origin = origin_of(tensor) if tensor.is_inference() else None
            if origin is not None:
                break
    if origin is not None:
        _report(origin, f"the {type(module).__name__} module", action)


def _check_own(module: nn.Module) -> None:
    """Report a parameter or buffer of ``module`` that is an inference tensor.

    Autograd fails on it in this very forward or at the optimizer's in-place step. The
    call that left it there is named when gradguard saw it (``modules_after``).
    """
    for parameter in module._parameters.values():
        if parameter is not None and parameter.is_inference():
            return _report_own(module)
    for buffer in module._buffers.values():
        if buffer is not None and buffer.is_inference():
            return _report_own(module)
    return None


def _report_own(module: nn.Module) -> None:
    current, action = level()
    if current == "off":
        return
    own: list[tuple[str, str, torch.Tensor]] = [
        ("parameter", n, t) for n, t in module._parameters.items() if t is not None
    ]
    own += [("buffer", n, t) for n, t in module._buffers.items() if t is not None]
    kind, name, tensor = next(item for item in own if item[2].is_inference())
    entry = _resident.get(id(tensor))
    known = entry is not None and entry[0]() is tensor
    origin = entry[1] if entry is not None and known else ("unknown", 0)
    made = (
        f"made by {origin[0]} (call {origin[1]})"
        if known
        else "made under inference mode (the model was built or loaded in it)"
    )
    msg = (
        f"gradguard: {kind} {name!r} of the {type(module).__name__} module is an "
        f"inference tensor, {made}, and the module is about to train: torch fails "
        "where autograd meets it. Fix: give that target mode='no_grad', or build or "
        "load the model outside inference mode; gradguard.check_module(model) "
        "lists every such tensor."
    )
    from ._telemetry import emit_leak

    emit_leak(origin[0], origin[1], f"{kind} {name!r}", msg)
    if action == "raise":
        raise LeakError(msg)
    warnings.warn(msg, LeakWarning, stacklevel=user_stacklevel(extra_dirs=(_TORCH_DIR,)))


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


# --- inference tensors a call leaves in its modules ---------------------------------------


class _Landed:
    """Inference tensors given to modules, as torch's registration hooks report them.

    A lazily built cache (``self.register_buffer("cos", ...)`` on the first forward) or a
    submodule replaced inside a guarded call lands in the model as an inference tensor,
    and the model's next training step fails. Each registration bumps ``seq``; a call
    that sees ``seq`` moved between its start and its end claims the entries its thread
    made meanwhile, for the modules it ran on.
    """

    __slots__ = ("entries", "seq")

    def __init__(self) -> None:
        self.seq = 0
        # (seq, thread, module, name, kind): kind is "parameter", "buffer" or "module".
        self.entries: list[tuple[int, int, weakref.ref[nn.Module], str, str]] = []


landed = _Landed()
_MAX_LANDED = 1024  # registrations no guarded call claims (a model built outside one)
_registration_handles: list[Any] = []


def _landed_hook(kind: str) -> Any:
    def hook(module: nn.Module, name: str, value: Any) -> None:
        if value is None:
            return
        if kind == "module":
            if not torch.is_inference_mode_enabled():
                return
        elif not value.is_inference():
            return
        with _lock:
            landed.seq += 1
            entries = landed.entries
            entries.append((landed.seq, threading.get_ident(), weakref.ref(module), name, kind))
            if len(entries) > _MAX_LANDED:
                del entries[: _MAX_LANDED // 2]

    return hook


def watch_registrations() -> None:
    """Install the registration hooks that ``landed`` reads (once, when a target is made).

    torch runs them only when a module gets a parameter, buffer or submodule, never on a
    forward; they note inference tensors only.
    """
    if _registration_handles:
        return
    with _lock:
        if not _registration_handles:
            register = nn.modules.module
            _registration_handles.extend(
                [
                    register.register_module_parameter_registration_hook(_landed_hook("parameter")),
                    register.register_module_buffer_registration_hook(_landed_hook("buffer")),
                    register.register_module_module_registration_hook(_landed_hook("module")),
                ]
            )


_Resident = dict[int, tuple[str, str, torch.Tensor]]  # id -> (qualified name, kind, tensor)


def _inference_tensors(roots: list[nn.Module]) -> _Resident:
    """Every parameter and buffer below ``roots`` that is an inference tensor."""
    found: _Resident = {}
    for root in roots:
        prefix = "" if len(roots) == 1 else f"{type(root).__name__}."
        for name, parameter in root.named_parameters():
            if parameter.is_inference():
                found[id(parameter)] = (prefix + name, "parameter", parameter)
        for name, buffer in root.named_buffers():
            if buffer.is_inference():
                found[id(buffer)] = (prefix + name, "buffer", buffer)
    return found


def _claim(roots: list[nn.Module], mark: int) -> _Resident:
    """The inference tensors registered into ``roots`` by this thread since ``mark``."""
    thread = threading.get_ident()
    with _lock:
        mine = [e for e in landed.entries if e[0] > mark and e[1] == thread]
        if not mine:
            return {}
    where: dict[int, str] = {}
    for root in roots:
        prefix = "" if len(roots) == 1 else f"{type(root).__name__}."
        for name, module in root.named_modules():
            where.setdefault(id(module), prefix + name)
    found: _Resident = {}
    claimed = []
    for entry in mine:
        _, _, ref, name, kind = entry
        module = ref()
        if module is None or id(module) not in where:
            continue  # a module the call made and dropped, or an outer call's: not ours
        claimed.append(entry)
        path = f"{where[id(module)]}.{name}".lstrip(".")
        if kind == "module":
            child = module._modules.get(name)
            if child is not None:
                for sub, (subname, subkind, tensor) in _inference_tensors([child]).items():
                    found[sub] = (f"{path}.{subname}", subkind, tensor)
            continue
        table: dict[str, Any] = module._parameters if kind == "parameter" else module._buffers
        value = table.get(name)
        if value is not None and value.is_inference():
            found[id(value)] = (path, kind, value)
    if claimed:
        with _lock:
            landed.entries = [e for e in landed.entries if e not in claimed]
    return found


# Inference tensors found in modules, with the call that left them (weakly, by id).
_resident: dict[int, tuple[weakref.ref[torch.Tensor], _Origin]] = {}


def _forget_resident(key: int, ref: weakref.ref[torch.Tensor]) -> None:
    with _lock:
        entry = _resident.get(key)
        if entry is not None and entry[0] is ref:
            del _resident[key]


def modules_before(roots: list[nn.Module]) -> set[int]:
    """What a target's first call compares against: the inference tensors already there."""
    return set(_inference_tensors(roots))


def modules_after(
    roots: list[nn.Module],
    target: str,
    call: int,
    mark: int,
    known: set[int] | None,
    warn: bool,
) -> tuple[set[int] | None, bool]:
    """Report new inference tensors the call left in its modules.

    Exact for registrations (``landed``); on calls 1, 2, 4, 8… every parameter and buffer
    is also compared with ``known``, the inference tensors of the previous such look, to
    catch ``.half()``/``.to()`` done inside a call, which registers nothing. Each find is
    a ``gradguard.leak`` event; it is also a warning when ``warn`` (once per target: a
    cache rebuilt for every longer input says nothing new). Returns the new ``known``
    and whether it warned.
    """
    current, action = level()
    if current == "off":
        return known, False
    found = _claim(roots, mark) if landed.seq != mark else {}
    since = call
    if not call & (call - 1):
        everything = _inference_tensors(roots)
        if known is not None:
            for key, value in everything.items():
                if key not in known:
                    found[key] = value
            since = call // 2 + 1
        known = set(everything)
    elif known is not None:
        known.update(found)
    for key, (_, _, tensor) in found.items():
        entry = (weakref.ref(tensor, functools.partial(_forget_resident, key)), (target, call))
        with _lock:
            _resident[key] = entry
    if not found:
        return known, False
    _report_resident(target, call, since, list(found.values()), action, warn)
    return known, warn


def _report_resident(
    target: str,
    call: int,
    since: int,
    found: list[tuple[str, str, torch.Tensor]],
    action: Action,
    warn: bool,
) -> None:
    names = ", ".join(f"{kind} {name!r}" for name, kind, _ in found[:5])
    if len(found) > 5:
        names += f" and {len(found) - 5} more"
    which = f"call {call}" if since == call else f"one of calls {since}-{call}"
    msg = (
        f"gradguard: {target} ({which}) left inference tensors in its modules: {names}. "
        "Training the model later fails where they meet autograd ('Inference tensors "
        "cannot be saved for backward', or an in-place update by the optimizer or "
        "BatchNorm). Fix: build them outside inference mode (in __init__, or under "
        "torch.no_grad()), or give that target mode='no_grad'; "
        "gradguard.check_module(model) lists them."
    )
    from ._telemetry import emit_leak

    emit_leak(target, call, names, msg)
    if action == "raise":
        raise LeakError(msg)
    if warn:
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
