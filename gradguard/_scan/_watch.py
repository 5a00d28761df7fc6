"""Watching module calls while a scan is open.

One watcher on the owner of torch's global forward pre-hook (``_hooks.forward_pre_hooks``,
name ``"scan"``), there only while a scan is open, sees every module call of every thread.
The first module call of a thread that is not inside another one (the outermost call, the
one user code made) gets a ``Call`` record, kept in a thread-local, and:

- a forward hook on that one module, with ``always_call`` so that it runs even when the
  forward raises (the global hook owner has none, and a call whose end went unseen would
  leave the thread's state open);
- when it records a graph (grad on, not inference mode), torch's saved-tensor hooks,
  pushed for the call and popped at its end. They are thread-local in torch, so each
  thread's outermost call pushes its own;
- when it runs with grad off (evaluation code), a look at each module called inside it
  that runs in training mode.

A nested call costs one ``is_compiling`` check, one thread-local read and, in evaluation
code, a look at ``module.training``.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import CodeType
from typing import Any

import torch
from torch import nn

from .._hooks import forward_pre_hooks
from .._outputs import shallow_tensors
from ._findings import Kind, Observation, ScanFindings, Session
from ._graph import Graph, unpack

__all__ = ["registry", "scan"]

_is_compiling = getattr(torch.compiler, "is_compiling", None) or (
    lambda: torch._dynamo.is_compiling()  # torch < 2.3
)
_grad_enabled = torch.is_grad_enabled
_inference_enabled = torch.is_inference_mode_enabled
_autograd: Any = torch._C._autograd
_push = _autograd._push_saved_tensors_default_hooks
_pop = _autograd._pop_saved_tensors_default_hooks
_top = _autograd._top_saved_tensors_default_hooks
_hooks_enabled = _autograd._saved_tensors_hooks_is_enabled
_ScriptModule = torch.jit.ScriptModule
# Keys for the per-call forward hook: negative, so never one of torch's handle ids.
_keys = itertools.count(-1, -1)

_SKIP = (
    os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # gradguard
)
_skipped: dict[CodeType, bool] = {}
_places: dict[tuple[str, int], str] = {}


# Functions of torch that run a model in training mode under no_grad on purpose.
_DELIBERATE = frozenset({inspect.unwrap(torch.optim.swa_utils.update_bn).__code__})


def where(depth: int = 1) -> str:
    """The ``file:line`` of the first frame outside torch and gradguard above the caller."""
    return _walk(depth + 1)[0]


def _walk(depth: int) -> tuple[str, bool]:
    """``where``, and whether one of the skipped frames is in ``_DELIBERATE``."""
    frame: Any = sys._getframe(depth)
    deliberate = False
    while frame is not None:
        code = frame.f_code
        skip = _skipped.get(code)
        if skip is None:
            skip = _skipped[code] = code.co_filename.startswith(_SKIP)
        if skip:
            deliberate = deliberate or code in _DELIBERATE
        else:
            key = (code.co_filename, frame.f_lineno)
            place = _places.get(key)
            if place is None:
                place = _places[key] = f"{_shown(code.co_filename)}:{frame.f_lineno}"
            return place, deliberate
        frame = frame.f_back
    return "<unknown>", deliberate


def _shown(filename: str) -> str:
    """A path relative to the working directory when it is under it."""
    try:
        relative = os.path.relpath(filename)
    except ValueError:  # another drive on Windows
        return filename
    return filename if relative.startswith(os.pardir) else relative


def qualname(module: nn.Module) -> str:
    """The class's qualified name; for ``torch.compile(model)``, the model's."""
    inner = getattr(module, "_orig_mod", None)  # torch._dynamo's OptimizedModule
    cls = type(inner if isinstance(inner, nn.Module) else module)
    return f"{cls.__module__}.{cls.__qualname__}"


# --- which modules behave differently in training mode ------------------------------------

_DROPOUT, _NORM, _TRAIN = "dropout", "norm", "train"
_NORMS = (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)
_categories: dict[type, str | None] = {}


def _category(cls: type) -> str | None:
    category = _categories.get(cls, "")
    if category == "":
        if issubclass(cls, nn.modules.dropout._DropoutNd):
            category = _DROPOUT
        elif issubclass(cls, _NORMS):
            category = _NORM
        elif getattr(cls, "train", None) is not nn.Module.train:
            category = _TRAIN
        else:
            category = None
        _categories[cls] = category
    return category


# --- the per-thread state and the per-call record -----------------------------------------


class _Thread(threading.local):
    def __init__(self) -> None:
        self.call: Call | None = None


_local = _Thread()
# Forward hooks left on modules whose forward raised: torch iterates the module's hook
# dict while it runs them after an error, so they are taken out later, at the next
# outermost call of the same thread or when the last scan closes. (module, key, thread)
_stale: list[tuple[nn.Module, int, int]] = []


class Call:
    """The outermost module call running in this thread."""

    __slots__ = ("evaluating", "graph", "key", "module", "sessions", "training")

    def __init__(self, module: nn.Module, sessions: tuple[Session, ...], key: int) -> None:
        self.module = module
        self.sessions = sessions
        self.key = key
        self.graph: Graph | None = None
        self.evaluating = False  # grad off or inference mode: evaluation code
        self.training: dict[tuple[str, bool], None] | None = None

    def saw(self, module: nn.Module) -> None:
        """``module`` runs in training mode inside evaluation code."""
        category = _category(type(module))
        if category is None:
            return
        name = type(module).__qualname__
        deliberate = False
        if category == _DROPOUT:
            # Everything was put in eval but the dropout: Monte Carlo dropout.
            deliberate = module is not self.module and not self.module.training
        elif category == _NORM and getattr(module, "track_running_stats", False):
            # momentum=None is a cumulative average: what update_bn sets for its pass.
            deliberate = getattr(module, "momentum", 0.1) is None
            if getattr(module, "running_mean", None) is not None:
                name += " (running statistics updated)"
        elif category == _NORM:
            return  # no running statistics: the same computation in both modes
        if self.training is None:
            self.training = {}
        self.training[(name, deliberate)] = None

    def end(self, module: nn.Module, args: Any, result: Any) -> None:
        """The module's forward hook (``always_call``): the outermost call ended."""
        local = _local
        if local.call is not self:
            return  # this module called in another thread, or a hook left after an error
        local.call = None
        if sys.exc_info()[1] is None:
            module._forward_hooks.pop(self.key, None)
            module._forward_hooks_always_called.pop(self.key, None)
        else:
            _stale.append((module, self.key, threading.get_ident()))
        graph = self.graph
        name = qualname(module)
        if graph is not None:
            _pop()
            if graph.packed and not graph.used and result is not None:
                graph.watch_outputs(result)
            graph.close(lambda: where(3), name)
        training = self.training
        if training:
            place, in_deliberate = _walk(2)
            details: dict[Kind, list[str]] = {}
            for detail, deliberate in training:
                kind: Kind = (
                    "training_mode_deliberate" if deliberate or in_deliberate else "training_mode"
                )
                details.setdefault(kind, []).append(detail)
            for kind, names in details.items():
                for session in self.sessions:
                    session.post(Observation(kind, place, name, 0, ", ".join(names), session.label))


def _watch(module: nn.Module, args: tuple[Any, ...]) -> None:
    """The ``"scan"`` watcher of torch's global forward pre-hook."""
    if _is_compiling():
        return  # code dynamo compiles is not seen (its hooks would only be traced)
    call = _local.call
    if call is not None:
        if call.evaluating and module.training:
            call.saw(module)
        return
    _enter(module, args)


def _enter(module: nn.Module, args: tuple[Any, ...]) -> None:
    sessions = registry.sessions
    if not sessions or isinstance(module, _ScriptModule):
        return
    local = _local
    if _stale:
        _clean(threading.get_ident())
    call = Call(module, sessions, next(_keys))
    # What register_forward_hook(call.end, always_call=True) does, without a handle
    # object per call (outermost calls are many in a serving loop); taken out in ``end``.
    module._forward_hooks[call.key] = call.end
    module._forward_hooks_always_called[call.key] = True
    local.call = call
    if _grad_enabled() and not _inference_enabled():
        # Another saved-tensor hook in force (activation checkpointing, save_on_cpu) owns
        # what is saved; pushing over it would take the tensors it must see.
        if _hooks_enabled() and _top(False) is None:
            graph = call.graph = Graph(module, _storages(args), sessions)
            _push(graph.pack, unpack)
    else:
        call.evaluating = True
        if module.training:
            call.saw(module)


def _storages(args: tuple[Any, ...]) -> set[int]:
    storages = {t.untyped_storage().data_ptr() for t in shallow_tensors(args)}
    # Keyword arguments are not handed to a pre-hook: read them from torch's call frame.
    frame: Any = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            break
        if frame.f_code is _CALL_IMPL:
            kwargs = frame.f_locals.get("kwargs")
            if kwargs:
                storages.update(
                    t.untyped_storage().data_ptr() for t in shallow_tensors(kwargs.values())
                )
            break
        frame = frame.f_back
    return storages


_CALL_IMPL = nn.Module._call_impl.__code__


def _clean(thread: int | None) -> None:
    """Take out the hooks left by ``thread`` (every thread's: None)."""
    for entry in list(_stale):
        module, key, ident = entry
        if thread is None or ident == thread:
            module._forward_hooks.pop(key, None)
            module._forward_hooks_always_called.pop(key, None)
            with contextlib.suppress(ValueError):  # another thread took it out meanwhile
                _stale.remove(entry)


# --- open scans ---------------------------------------------------------------------------


class _Registry:
    """The scans open now; the watcher is installed while there is one."""

    def __init__(self) -> None:
        self.sessions: tuple[Session, ...] = ()
        self._lock = threading.Lock()

    def open(self, session: Session) -> None:
        with self._lock:
            self.sessions = (*self.sessions, session)
            forward_pre_hooks.add("scan", _watch)

    def close(self, session: Session) -> None:
        with self._lock:
            self.sessions = tuple(s for s in self.sessions if s is not session)
            if not self.sessions:
                forward_pre_hooks.discard("scan")
                _clean(None)
        if _stale:
            _clean(threading.get_ident())

    def reset(self) -> None:
        """Close every scan (for tests)."""
        with self._lock:
            self.sessions = ()
            forward_pre_hooks.discard("scan")
            _clean(None)


registry = _Registry()


@contextmanager
def scan() -> Iterator[ScanFindings]:
    """Find inference code nobody guarded, while the block runs, and measure its waste.

    Every module call made in the block (in any thread) is watched. The outermost call
    that records an autograd graph no backward ever uses is a ``graph_unused`` finding,
    with the bytes the graph kept for backward; a Dropout or BatchNorm (or a module that
    overrides ``train()``) in training mode inside a call made with grad off is a
    ``training_mode`` finding. Each finding names the user's ``file:line`` of the call,
    the module's class, and the gradguard line that fixes it. See docs/scan.md.

    Example::

        with gradguard.scan() as findings:
            out = model(x)          # forgot torch.no_grad() and model.eval()
            del out                 # the graph is freed unused here
        print(findings)
    """
    session = Session()
    registry.open(session)
    try:
        yield ScanFindings(session)
    finally:
        registry.close(session)
