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
from ._errors import GradguardWarning, LeakError, LeakWarning
from ._hooks import forward_pre_hooks
from ._outputs import _ATOMS, each_tensor, shallow_tensors
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
_is_compiling = getattr(torch.compiler, "is_compiling", None) or (
    lambda: torch._dynamo.is_compiling()  # torch < 2.3
)


class _Watch(threading.local):
    """A ``watch_leaks`` block open in this thread overrides the configured level."""

    def __init__(self) -> None:
        self.stack: list[tuple[Level, Action]] = []


_watch = _Watch()
_blocks_open = 0  # watch_leaks blocks open in any thread: none, no thread-local lookup


def level() -> tuple[Level, Action]:
    """The leak level and action in force in this thread."""
    if _blocks_open and _watch.stack:
        return _watch.stack[-1]
    return current().leaks, "warn"


def watching() -> bool:
    """Whether leaks are watched in this thread (``level()`` without building a tuple)."""
    if _blocks_open:
        stack = _watch.stack
        if stack:
            return stack[-1][0] != "off"
    return current().leaks != "off"


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
    global _blocks_open
    with _lock:
        _blocks_open += 1
    _watch.stack.append((level, action))
    try:
        if level == "strict":
            with _Strict():
                yield
        else:
            yield
    finally:
        _watch.stack.pop()
        with _lock:
            _blocks_open -= 1


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

_Entry = tuple[weakref.ref[torch.Tensor], _Origin]
_origins: dict[int, _Entry] = {}
# Reentrant: a weak reference's callback (_forget) runs wherever the collector frees a
# tensor, which may be inside this lock, in this very thread.
_lock = threading.RLock()


def _forget(key: int, ref: weakref.ref[torch.Tensor]) -> None:
    # The hook is not taken out here: a collection can run this callback while torch
    # copies its global hooks for a module call, and a change then would break that
    # call. It goes at the next guarded call's start (``unhook_idle``) or at the next
    # module call (``_check_call``), whichever comes first.
    with _lock:
        entry = _origins.get(key)
        if entry is not None and entry[0] is ref:
            del _origins[key]


def _unhook() -> None:
    with _lock:
        if not _origins:
            forward_pre_hooks.discard("leaks")


def unhook_idle() -> None:
    """At a guarded call's start: take the hook out if every watched tensor has died, so
    that the call's own module calls take torch's path without hooks."""
    if not _origins and "leaks" in forward_pre_hooks.watchers:
        _unhook()


def _note(tensor: torch.Tensor, origin: _Origin) -> None:
    global _noted
    key = id(tensor)
    entry = (weakref.ref(tensor, functools.partial(_forget, key)), origin)
    with _lock:
        _origins[key] = entry
        _noted += 1
        if "leaks" not in forward_pre_hooks.watchers:
            forward_pre_hooks.add("leaks", _check_call)


def remember(result: Any, target: str, call: int) -> None:
    """Note that ``target``'s ``call`` made the inference tensors inside ``result``."""
    kind = type(result)
    if kind is _Tensor:  # the common cases first, without walking anything
        if result.is_inference():
            _note(result, (target, call))
        return
    if kind in _ATOMS:  # a label, a score: nothing to remember
        return
    origin = (target, call)

    def note(tensor: torch.Tensor) -> bool:
        if tensor.is_inference():
            _note(tensor, origin)
        return False  # walk on

    each_tensor(result, note)


def origin_of(tensor: torch.Tensor) -> _Origin | None:
    """Which guarded call made ``tensor``, or the tensor it is a view of, if gradguard
    remembers it."""
    entry = _origins.get(id(tensor))
    if entry is not None and entry[0]() is tensor:
        return entry[1]
    return _origin_of_view(tensor) if tensor.is_inference() else None


# Remembered tensors by the storage they hold, for views of them: built at the first
# lookup after a tensor was remembered, so that a training step that meets the same
# unknown inference tensor in every module (a mask the user made) looks it up once per
# remembered batch, not by a scan per module call.
_noted = 0
_by_storage: tuple[int, dict[tuple[torch.device, int], _Entry]] = (-1, {})


def _origin_of_view(tensor: torch.Tensor) -> _Origin | None:
    """The origin of the remembered tensor whose storage ``tensor`` shares.

    A view of a returned tensor taken outside inference mode (``logits[..., :-1, :]``,
    ``logits.view(-1, vocab)``, as loss code does) is a new inference tensor, and torch
    does not link inference tensors to their base (``_base`` is None): the storage is
    what they share, while the returned tensor lives.
    """
    try:
        address = tensor.untyped_storage().data_ptr()
    except Exception:  # sparse, nested and other tensors without one storage
        return None
    if not address:  # empty or meta: no storage to share
        return None
    entry = _storage_index().get((tensor.device, address))
    if entry is None or entry[0]() is None:  # none, or one that died since
        return None
    return entry[1]


def _storage_index() -> dict[tuple[torch.device, int], _Entry]:
    global _by_storage
    built, index = _by_storage
    if built != _noted:
        with _lock:
            built = _noted
            entries = list(_origins.values())
        index = {}
        for entry in entries:
            base = entry[0]()
            if base is None:
                continue
            try:
                address = base.untyped_storage().data_ptr()
            except Exception:  # one tensor without a storage spoils no other
                continue
            if address:
                index.setdefault((base.device, address), entry)
        _by_storage = (built, index)
    return index


# --- the boundary check -------------------------------------------------------------------


def _check_call(module: nn.Module, args: Any) -> None:
    """Global forward pre-hook, installed only while gradguard-made inference tensors live.

    It runs on every module call while installed, so the usual case (inside a guarded
    call, or a training step with nothing leaking) is decided in a few checks. Nothing
    but what the user asked for (``LeakError``, or a ``LeakWarning`` a filter made an
    error) may escape into their forward.

    In code torch.compile traces it returns at once: the check would break the graph
    (torch.is_inference_mode_enabled() cannot be traced), and the compiled module's own
    call, which runs eagerly, is checked all the same.
    """
    if _is_compiling():
        return
    try:
        _check_module_call(module, args)
    except (LeakError, Warning):
        raise
    except Exception as error:
        _internal_error(error)


def _check_module_call(module: nn.Module, args: Any) -> None:
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
        compiled = module._modules.get("_orig_mod")  # torch.compile(model)'s wrapper
        if compiled is not None and not recorded:
            # Its children run traced, unchecked: it answers for the whole model.
            recorded = any(p.requires_grad for p in compiled.parameters())
    if _resident and (recorded or module.training):
        _check_own(module, recorded)  # about to train: its own parameters and buffers first
    if suspect is None or not recorded:
        return
    current, action = level()
    if current == "off":
        return
    origin = origin_of(suspect)
    if origin is None:  # an inference tensor gradguard did not make: look for one it did
        for tensor in shallow_tensors(args):
            origin = origin_of(tensor) if tensor is not suspect and tensor.is_inference() else None
            if origin is not None:
                break
    if origin is not None:
        _report(origin, f"the {type(module).__name__} module", action)


def _check_own(module: nn.Module, recorded: bool) -> None:
    """Report a parameter or buffer of ``module`` that a guarded call left as an
    inference tensor (``look_after``), when the module is about to train with it.

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
            entry = _resident.get(id(tensor))
            # Still an inference tensor: `model.float()` outside inference mode mends it.
            if entry is not None and entry[0]() is tensor and tensor.is_inference():
                _report_own(module, kind, name, entry[1])
                return


def _report_own(module: nn.Module, kind: str, name: str, origin: _Origin) -> None:
    current, action = level()
    if current == "off":
        return
    msg = (
        f"gradguard: {kind} {name!r} of the {type(module).__name__} module is an inference "
        f"tensor left by {origin[0]} (call {origin[1]}), and the module is about to train: "
        "torch fails where autograd must save it for backward, or where it is updated in "
        "place. Fix: give that target mode='no_grad', or build the tensor outside "
        "inference mode; gradguard.check_module(model) lists every such tensor."
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
_MAX_LANDED = 4096  # registrations no guarded call claims (a model built outside one)
_registration_handles: list[Any] = []
_is_lazy = torch.nn.parameter.is_lazy


def _inference(value: Any) -> bool:
    """Whether ``value`` is an initialised inference tensor (lazy parameters are neither)."""
    return isinstance(value, _Tensor) and not _is_lazy(value) and value.is_inference()


def _landed_hook(kind: str) -> Any:
    def hook(module: nn.Module, name: str, value: Any) -> None:
        try:
            if value is None or not _inference_enabled():
                return
            if kind != "module" and not _inference(value):
                return
            with _lock:
                landed.seq += 1
                entries = landed.entries
                entries.append((landed.seq, threading.get_ident(), weakref.ref(module), name, kind))
                if len(entries) > _MAX_LANDED:
                    del entries[: _MAX_LANDED // 2]
        except Exception as error:  # a registration must never fail because of gradguard
            _internal_error(error)

    return hook


def watch_registrations() -> None:
    """Install the registration hooks that ``landed`` reads (once, when a target is made).

    torch runs them only when a module gets a parameter, buffer or submodule, never on a
    forward; outside inference mode they return at once.
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


TensorKind = Literal["parameter", "buffer"]
_Found = dict[int, tuple[str, TensorKind, torch.Tensor]]  # id -> (qualified name, kind, tensor)


def _inference_tensors(root: nn.Module, prefix: str = "") -> _Found:
    """Every parameter and buffer below ``root`` that is an inference tensor."""
    found: _Found = {}
    for name, parameter in root.named_parameters():
        if _inference(parameter):
            found[id(parameter)] = (prefix + name, "parameter", parameter)
    for name, buffer in root.named_buffers():
        if _inference(buffer):
            found[id(buffer)] = (prefix + name, "buffer", buffer)
    return found


def _prefix(roots: list[nn.Module], root: nn.Module) -> str:
    return "" if len(roots) == 1 else f"{type(root).__name__}."


def _claim(roots: list[nn.Module], mark: int) -> _Found:
    """The inference tensors registered into ``roots`` by this thread since ``mark``.

    Entries for modules outside ``roots`` stay, for an outer call that may hold them;
    entries whose module died (made and dropped inside the call) go without a walk.
    """
    thread = threading.get_ident()
    with _lock:
        mine = [e for e in landed.entries if e[0] > mark and e[1] == thread]
    alive = [entry for entry in mine if entry[2]() is not None]
    where: dict[int, str] = {}
    if alive:
        for root in roots:
            prefix = _prefix(roots, root)
            for name, module in root.named_modules():
                where.setdefault(id(module), prefix + name)
    found: _Found = {}
    done = []
    for entry in mine:
        _, _, ref, name, kind = entry
        module = ref()
        path = where.get(id(module)) if module is not None else None
        if module is not None and path is None:
            continue  # not in the call's models: perhaps an outer call's
        done.append(entry)
        if module is None or path is None:
            continue
        path = f"{path}.{name}".lstrip(".")
        if kind == "module":
            child = module._modules.get(name)
            if child is not None:
                found.update(_inference_tensors(child, path + "."))
            continue
        tensor_kind: TensorKind = "parameter" if kind == "parameter" else "buffer"
        table: dict[str, Any] = module._parameters if kind == "parameter" else module._buffers
        value = table.get(name)
        if value is not None and _inference(value):
            found[id(value)] = (path, tensor_kind, value)
    if done:
        taken = set(map(id, done))
        with _lock:
            landed.entries = [e for e in landed.entries if id(e) not in taken]
    return found


# What the last look saw in each model: id(root) -> (root, ids of its inference tensors).
_baselines: dict[int, tuple[weakref.ref[nn.Module], set[int]]] = {}
# Inference tensors found in modules, with the call that left them (weakly, by id).
_resident: dict[int, tuple[weakref.ref[torch.Tensor], _Origin]] = {}


def _forget_resident(key: int, ref: weakref.ref[torch.Tensor]) -> None:
    with _lock:
        entry = _resident.get(key)
        if entry is not None and entry[0] is ref:
            del _resident[key]


def _forget_baseline(key: int, ref: weakref.ref[nn.Module]) -> None:
    with _lock:
        entry = _baselines.get(key)
        if entry is not None and entry[0] is ref:
            del _baselines[key]


def look_before(roots: list[nn.Module]) -> dict[int, set[int]] | None:
    """At the start of a looked-at call (1, 2, 4, 8…): the ids of each model's inference
    tensors (ids only: the look must not keep a replaced cache alive).

    ``look_after`` compares them with the last look (what earlier calls left) and with
    what the call itself leaves. ``None`` when leaks are not watched (or the look failed).
    """
    try:
        if not watching():
            return None
        return {id(root): set(_inference_tensors(root)) for root in roots}
    except Exception as error:
        _internal_error(error)
        return None


def look_after(
    roots: list[nn.Module],
    target: str,
    call: int,
    mark: int,
    before: dict[int, set[int]] | None,
    warn: bool,
) -> bool:
    """Report the new inference tensors a call left in its modules; never raise, except
    ``LeakError`` under ``action="raise"`` (and a ``LeakWarning`` made an error by a
    warnings filter). Returns whether it warned.

    Registrations are claimed exactly (``landed``). On calls 1, 2, 4, 8… (``before`` is
    given) every parameter and buffer is also compared, before and after the call, with
    the last look at the same model, to catch ``.half()``/``.to()``, which register
    nothing. Each find is a ``gradguard.leak`` event, and a warning when ``warn`` (once
    per target: a cache rebuilt for every longer input says nothing new).
    """
    try:
        current, action = level()
        if current == "off":
            return False
        found = _claim(roots, mark) if landed.seq != mark else {}
        earlier: _Found = {}
        if before is not None:
            for root in roots:
                key = id(root)
                seen = before.get(key, set())
                after = _inference_tensors(root, _prefix(roots, root))
                with _lock:
                    baseline = _baselines.get(key)
                    if baseline is not None and baseline[0]() is root:
                        known = baseline[1]
                        earlier.update(
                            (k, v) for k, v in after.items() if k in seen and k not in known
                        )
                    else:
                        ref = weakref.ref(root, functools.partial(_forget_baseline, key))
                        baseline, known = (ref, set()), set()
                    _baselines[key] = (baseline[0], set(after))
                # Tensors already there before the call (a loaded module swapped in, say)
                # are not the call's, whatever registered them.
                for k in [k for k in found if k in seen or k in known]:
                    del found[k]
                found.update((k, v) for k, v in after.items() if k not in seen)
        else:
            with _lock:  # what the claim found is known: the next look must not repeat it
                for root in roots:
                    baseline = _baselines.get(id(root))
                    if baseline is not None and baseline[0]() is root:
                        baseline[1].update(found)
        for values, since in ((found, call), (earlier, call // 2 + 1)):
            if not values or (values is earlier and since > call - 1):
                continue  # no call of this target ran since the last look: not its doing
            for key, (_, _, tensor) in values.items():
                alive = weakref.ref(tensor, functools.partial(_forget_resident, key))
                with _lock:
                    _resident[key] = (alive, (target, since))
            _report_resident(target, call, since, list(values.values()), action, warn)
        return warn and bool(found or earlier)
    except (LeakError, Warning):
        raise  # what the user asked for: action="raise", or warnings made errors
    except Exception as error:  # the call's result matters more than this look
        _internal_error(error)
        return False


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
    if since == call:
        who = f"{target} (call {call}) left"
    else:
        who = (
            f"{target} (one of calls {since}-{call - 1}), or code run between those calls "
            "under inference mode, left"
        )
    msg = (
        f"gradguard: {who} inference tensors in its modules: {names}. Training the model "
        "later fails where autograd must save them for backward, or update them in place "
        "(an optimizer step, BatchNorm's running stats). Fix: build them outside inference "
        "mode (in __init__, or under torch.no_grad()), or give that target "
        "mode='no_grad'; gradguard.check_module(model) lists them."
    )
    from ._telemetry import emit_leak

    emit_leak(target, call, names, msg)
    if action == "raise":
        raise LeakError(msg)
    if warn:
        warnings.warn(msg, LeakWarning, stacklevel=user_stacklevel(extra_dirs=(_TORCH_DIR,)))


_internal_warned = False


def _internal_error(error: BaseException) -> None:
    """An error in the sentinel itself: the call goes on; warn once."""
    global _internal_warned
    if _internal_warned:
        return
    _internal_warned = True
    msg = (
        f"gradguard's leak sentinel failed ({type(error).__name__}: {error}) and skipped "
        "a check; the call itself went on. Further failures are not reported. This is a "
        "gradguard bug: please report it with this message; until then "
        "gradguard.configure(leaks='off') turns the sentinel off."
    )
    warnings.warn(msg, GradguardWarning, stacklevel=user_stacklevel(extra_dirs=(_TORCH_DIR,)))


# --- check_module -------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """A parameter or buffer of a module that is an inference tensor."""

    name: str
    kind: TensorKind
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
    for name, kind, _ in _inference_tensors(module).values():  # lazy parameters: not yet
        findings.append(Finding(name, kind, fix_parameter if kind == "parameter" else fix_buffer))
    return findings
