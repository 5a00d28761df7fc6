"""The one place where a guarded call is entered and left.

``infer``, ``guard`` and ``scope`` each build a ``Target`` once, when decorating or
guarding: its name, its policy, the mode it runs in and how it finds its modules. Every
call then goes through ``Target.call`` (plain functions and modules) or through
``Target.enter``/``Target.leave`` around each step (generators, coroutines, blocks):
policy → eval switch → mode → run → mode back → eval back.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import wrapt
from torch import nn

from . import _eval, _leaks, _memory, _modes
from ._errors import FallbackWarning
from ._outputs import clone_inference_tensors
from ._policy import Policy
from ._stack import user_stacklevel
from ._telemetry import Measure, Recorder

__all__ = [
    "ModuleFinder",
    "Step",
    "Target",
    "TargetInfo",
    "Watch",
    "fixed_modules",
    "module_finder",
    "underlying",
]

Kind = Literal["function", "module", "scope"]
ModuleFinder = Callable[[Any, tuple[Any, ...], dict[str, Any]], list[nn.Module]]
Step = tuple[Any, Any, Any]  # (eval hold or None, mode token, tensor tracker or None)
# (call, registrations seen at its start, modules, their inference tensors at its start)
Watch = tuple[int, int, list[nn.Module], Any]

_Module = nn.Module
_Proxy = wrapt.ObjectProxy
_hold = _eval.hold
_release = _eval.release
_enter = _modes.enter
_InferenceMode = _modes._InferenceMode
_leave = _modes.leave
_landed = _leaks.landed
_watching = _leaks.watching
_look_before = _leaks.look_before
_unhook_idle = _leaks.unhook_idle


@dataclass(frozen=True)
class TargetInfo:
    """What gradguard decided for a target, as returned by ``gradguard.describe``.

    Attributes:
        name: the name used in logs and messages.
        kind: ``"function"``, ``"module"`` or ``"scope"``.
        mode: the mode its next call runs in, ``"inference"`` or ``"no_grad"``.
        reason: why that mode (the option, the code seen, or the error that caused a fallback).
        calls: how many calls it has had in this process.
        policy: its options.
    """

    name: str
    kind: Kind
    mode: Literal["inference", "no_grad"]
    reason: str
    calls: int
    policy: Policy


class Target:
    """A guarded function, module method or block, with everything decided up front."""

    __slots__ = (
        "_fallback_lock",
        "_next_call",
        "calls",
        "clone",
        "find_modules",
        "inference",
        "kind",
        "leak_warned",
        "name",
        "policy",
        "reason",
        "recorder",
        "switch",
    )

    def __init__(
        self,
        name: str,
        kind: Kind,
        policy: Policy,
        code: Sequence[Callable[..., Any]],
        find_modules: ModuleFinder | None,
    ) -> None:
        self.name = name
        self.kind = kind
        self.policy = policy
        self.calls = 0
        # next() on a count is atomic under the GIL, unlike `calls += 1`: threads calling
        # one target each get their own call number.
        self._next_call = itertools.count(1).__next__
        self.clone = policy.outputs == "clone"
        self.find_modules = find_modules
        self.switch = policy.eval
        self.recorder = Recorder(name, policy)
        self.leak_warned = False  # about inference tensors a call left in its modules
        _leaks.watch_registrations()
        self._fallback_lock = threading.Lock()
        if policy.mode == "auto":
            need = _modes.grad_need(*code)
            self.inference = need is None
            self.reason = (
                "auto: no autograd use seen in its code"
                if need is None
                else f"auto: its code uses {need!r}, which needs autograd"
            )
        else:
            self.inference = policy.mode == "inference"
            self.reason = f"mode={policy.mode!r} option"

    def info(self) -> TargetInfo:
        """Return what was decided for this target."""
        mode: Literal["inference", "no_grad"] = "inference" if self.inference else "no_grad"
        return TargetInfo(self.name, self.kind, mode, self.reason, self.calls, self.policy)

    # -- one plain call ------------------------------------------------------------------

    def call(
        self,
        fn: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run one plain call of ``fn`` guarded, measured when the call is sampled."""
        call = self.calls = self._next_call()
        find = self.find_modules
        modules = find(instance, args, kwargs) if find is not None else None
        recorder = self.recorder
        if not recorder.sampled():
            return self._run(fn, args, kwargs, modules, None, call)
        measure = recorder.begin(call, modules, args, kwargs, self.inference, self.switch)
        try:
            result = self._run(fn, args, kwargs, modules, measure, call)
        except BaseException as error:
            recorder.end(measure, self, error)
            raise
        recorder.end(measure, self, None, result)
        return result

    def _run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        modules: list[nn.Module] | None,
        measure: Measure | None,
        call: int,
    ) -> Any:
        watch = self.watch_start(call, modules)
        held = _hold(modules) if modules and self.switch else None
        if held is not None and measure is not None:
            measure.switched = held.switched
        inference = self.inference
        try:
            # _enter/_leave inlined for the common case: a call costs less than torch's own
            # decorator only if nothing else is paid on the way.
            token = _InferenceMode(True) if inference else _enter(False)
            try:
                result = fn(*args, **kwargs)
            finally:
                if inference:
                    token.__exit__(None, None, None)
                else:
                    _leave(token)
        except RuntimeError as error:
            if not inference:
                raise
            decision = self.fall_back(error)
            if decision is None:
                raise
            if measure is not None:
                measure.fallback = True
                measure.retried = decision == "retry"
            if decision != "retry":
                raise
            # Run it again under no_grad: eval is still held, only the mode changes.
            token = _enter(False)
            try:
                result = fn(*args, **kwargs)
            finally:
                _leave(token)
        finally:
            if held is not None:
                _release(held)
        if watch is not None:
            self.watch_end(watch, result)
        return self.deliver(result, call)

    def watch_start(self, call: int, modules: list[nn.Module] | None) -> Watch | None:
        """At a call's start, what ``watch_end`` needs to find the inference tensors the
        call leaves in its modules: registrations counted so far, and on calls 1, 2,
        4, 8… a look at the modules (``_leaks.look_before``)."""
        _unhook_idle()  # the last watched output died: this call's modules skip the hook
        # Also without modules: a call that builds or loads a model registers its tensors.
        before = _look_before(modules) if modules and not call & (call - 1) else None
        return call, _landed.seq, modules or [], before

    def watch_end(self, watch: Watch | None, result: Any = None) -> None:
        """At a call's end (when it returned): report the new inference tensors it left
        in its modules, in modules it built or in those it returned in ``result``
        (``_leaks.look_after``), if it registered any or was looked at."""
        if watch is None:
            return
        call, mark, modules, before = watch
        if before is not None or _landed.seq != mark:
            warn = not self.leak_warned
            if _leaks.look_after(modules, self.name, call, mark, before, warn, result):
                self.leak_warned = True

    def deliver(self, result: Any, call: int) -> Any:
        """What the caller gets: clones of inference tensors (``outputs="clone"``), or the
        result itself, its inference tensors remembered for the leak sentinel."""
        if self.clone:
            return clone_inference_tensors(result)
        if result is not None and _watching():
            _leaks.remember(result, self.name, call)
        return result

    # -- calls made of steps: generators, coroutines, blocks ---------------------------

    def begin(
        self,
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        modules: list[nn.Module] | None = None,
    ) -> tuple[list[nn.Module], Measure | None, int, Watch | None]:
        """Start a call made of steps: count it, find its modules, start measuring it.

        Returns the modules each step switches to eval, the measure (``None`` when the
        call is not sampled), the call's number, and what ``end`` needs to look at the
        modules (``watch_start``).
        """
        call = self.calls = self._next_call()
        if modules is None:
            find = self.find_modules
            modules = find(instance, args, kwargs) if find is not None else []
        watch = self.watch_start(call, modules)
        recorder = self.recorder
        measure = (
            recorder.begin(call, modules, args, kwargs, self.inference, self.switch, True)
            if recorder.sampled()
            else None
        )
        return (modules if self.switch else []), measure, call, watch

    def end(
        self,
        measure: Measure | None,
        error: BaseException | None,
        result: Any,
        watch: Watch | None = None,
    ) -> None:
        """Finish a call made of steps: look at its modules, emit its event."""
        try:
            if error is None:
                self.watch_end(watch, result)
        finally:
            if measure is not None:
                self.recorder.end(measure, self, error, result)

    def enter(self, modules: list[nn.Module], measure: Measure | None = None) -> Step:
        """Switch ``modules`` to eval and enter the mode; ``leave`` undoes both."""
        held = _hold(modules) if modules else None
        tracker = None
        if measure is not None:
            if held is not None:
                measure.switched = max(measure.switched, held.switched)
            tracker = measure.tracker
        try:
            token = _enter(self.inference)
        except BaseException:
            if held is not None:
                _release(held)
            raise
        if tracker is not None:
            _memory.resume(tracker)
        return held, token, tracker

    def run_step(
        self, modules: list[nn.Module], measure: Measure | None, fn: Callable[[], Any]
    ) -> Any:
        """Run one step of a body (``gen.close``, say) between ``enter`` and ``leave``."""
        step = self.enter(modules, measure)
        try:
            return fn()
        finally:
            self.leave(step)

    def leave(self, step: Step) -> None:
        """Leave the mode and give the modules their flags back, whatever happened."""
        held, token, tracker = step
        try:
            if tracker is not None:
                _memory.suspend(tracker)
        finally:
            try:
                _leave(token)
            finally:
                if held is not None:
                    _release(held)

    def fall_back(
        self, error: BaseException, *, can_retry: bool = True, measure: Measure | None = None
    ) -> Literal["retry", "raise"] | None:
        """In auto mode, switch to no_grad for good if ``error`` shows the code needs autograd.

        Warns once per target. Returns ``None`` when ``error`` is no such error (or the
        mode is pinned), ``"retry"`` when the failed call should run again under no_grad
        (nothing has reached the caller yet, and the ``retry`` option allows it), and
        ``"raise"`` when the error must propagate.
        """
        if self.policy.mode != "auto":
            return None
        reason = _modes.fallback_reason(error)
        if reason is None:
            return None
        with self._fallback_lock:
            first = self.inference
            self.inference = False
            if first:
                self.reason = f"auto: fell back to no_grad after {type(error).__name__}: {reason}"
        retry = can_retry and self.policy.retry
        if measure is not None:
            measure.fallback = True
            measure.retried = retry
        if first:
            now = "runs it again under no_grad" if retry else "lets the error through"
            msg = (
                f"gradguard: {self.name} needs autograd inside ({type(error).__name__}: "
                f"{reason}), which inference mode does not allow; gradguard {now} and runs "
                "it under no_grad from now on. Pin the mode to say so: mode='no_grad' "
                "(or mode='inference' to keep inference mode and see the error)."
            )
            warnings.warn(msg, FallbackWarning, stacklevel=user_stacklevel())
        return "retry" if retry else "raise"


def _unwrap(module: Any) -> nn.Module:
    # A gradguard proxy (or any wrapt proxy) of a module: switch the module itself, since
    # setting a flag on the proxy would land on the proxy.
    while isinstance(module, _Proxy):
        module = module.__wrapped__
    return module  # type: ignore[no-any-return]


def fixed_modules(modules: Sequence[nn.Module]) -> ModuleFinder:
    """A finder for a target whose modules are known up front (a guard, a scope)."""
    found = [_unwrap(m) for m in modules]

    def find(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[nn.Module]:
        return found

    return find


def _owner_modules(owner: Any) -> list[nn.Module]:
    if isinstance(owner, _Module):
        return [_unwrap(owner)]
    attributes = getattr(owner, "__dict__", None)
    if not attributes:
        return []
    return [_unwrap(v) for v in attributes.values() if isinstance(v, _Module)]


def _auto_finder(self_obj: Any, bound: list[nn.Module]) -> ModuleFinder:
    def find(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[nn.Module]:
        owner = instance if instance is not None else self_obj
        found = _owner_modules(owner) if owner is not None and not isinstance(owner, type) else []
        if bound:
            found.extend(bound)
        for arg in args:
            if isinstance(arg, _Module):
                found.append(_unwrap(arg))
        if kwargs:
            for arg in kwargs.values():
                if isinstance(arg, _Module):
                    found.append(_unwrap(arg))
        return found

    return find


def underlying(fn: Any) -> tuple[Any, Any]:
    """Return (the function whose code runs and whose signature a call binds to, its self).

    ``self`` is fixed for a bound method or a callable object, ``None`` otherwise.
    """
    if isinstance(fn, (classmethod, staticmethod)):
        return fn.__func__, None
    if isinstance(fn, functools.partial):
        return fn, None
    if inspect.ismethod(fn):
        return fn.__func__, fn.__self__
    if inspect.isfunction(fn) or inspect.isbuiltin(fn) or isinstance(fn, type):
        return fn, None
    return type(fn).__call__, fn


def module_finder(fn: Callable[..., Any], policy: Policy) -> ModuleFinder:
    """Build, once, how a decorated ``fn`` finds the modules each call switches to eval.

    Raises ``ValueError`` when ``modules=`` names something ``fn`` has no parameter for
    and ``fn`` is not a method (whose attributes are only known at call time).
    """
    func, self_obj = underlying(fn)
    spec = policy.modules
    if spec == "auto":
        # A partial's own arguments are part of every call.
        frozen = (*fn.args, *fn.keywords.values()) if isinstance(fn, functools.partial) else ()
        return _auto_finder(self_obj, [_unwrap(a) for a in frozen if isinstance(a, _Module)])
    modules = [_unwrap(s) for s in spec if isinstance(s, _Module)]
    names = [s for s in spec if isinstance(s, str)]
    if not names:
        return fixed_modules(modules)
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        params = []
    first = params[0].name if params else None
    is_method = self_obj is not None or first in ("self", "cls")
    by_name = {p.name: (i, p.kind) for i, p in enumerate(params)}
    for name in names:
        if name not in by_name and not is_method:
            listed = ", ".join(by_name) or "none"
            msg = (
                f"modules={list(spec)!r}: {getattr(fn, '__qualname__', fn)!r} has no parameter "
                f"{name!r} (its parameters: {listed}); name one of its parameters, or pass "
                "the module itself"
            )
            raise ValueError(msg)
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    lookups = []
    for name in names:
        index, kind = by_name.get(name, (None, None))
        lookups.append((name, index if kind in positional else None, name in by_name))

    def find(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[nn.Module]:
        found = list(modules)
        offset = 1 if (instance is not None or self_obj is not None) else 0
        owner = instance if instance is not None else self_obj
        for name, index, is_param in lookups:
            if is_param:
                if index is not None and 0 <= index - offset < len(args):
                    value = args[index - offset]
                else:
                    value = kwargs.get(name)
                if value is None:
                    continue
                where = f"argument {name!r}"
            else:
                value = getattr(owner, name, None) if owner is not None else None
                if value is None:
                    msg = (
                        f"modules=[{name!r}]: {type(owner).__name__} has no attribute {name!r} "
                        "and the function no parameter of that name; name an attribute that "
                        "holds the module, a parameter, or pass the module itself"
                    )
                    raise AttributeError(msg)
                where = f"attribute {name!r}"
            if not isinstance(value, _Module):
                msg = (
                    f"modules=[{name!r}]: {where} is a {type(value).__name__}, not an "
                    "nn.Module; pass the module there, or leave the name out of modules="
                )
                raise TypeError(msg)
            found.append(_unwrap(value))
        return found

    return find
