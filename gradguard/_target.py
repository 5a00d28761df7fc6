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
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import wrapt
from torch import nn

from . import _eval, _hooks, _leaks, _memory, _modes, _net, _reach
from ._errors import FallbackWarning
from ._outputs import clone_inference_tensors
from ._policy import Policy
from ._stack import user_stacklevel
from ._telemetry import Measure, Recorder

__all__ = [
    "Begun",
    "FoundModule",
    "Look",
    "ModuleFinder",
    "Step",
    "Target",
    "TargetInfo",
    "fixed_modules",
    "module_finder",
    "underlying",
]

Kind = Literal["function", "module", "scope"]
ModuleFinder = Callable[[Any, tuple[Any, ...], dict[str, Any]], list[nn.Module]]

_Module = nn.Module
_Proxy = wrapt.ObjectProxy
# torch's own functions, read once: each is called on every guarded call.
_InferenceMode = torch._C._InferenceMode
_is_inference_mode_enabled = torch.is_inference_mode_enabled
_is_grad_enabled = torch.is_grad_enabled
_set_grad_enabled = torch._C._set_grad_enabled


class Look(NamedTuple):
    """What the leak look at the end of a call made of steps needs from its start."""

    call: int
    registrations: int  # the registrations seen so far (``_leaks.landed.seq``)
    modules: list[nn.Module]
    before: Any  # the modules' inference tensors at the start, on looked-at calls (1, 2, 4…)


class Begun(NamedTuple):
    """What ``Target.begin`` decided for a call made of steps."""

    modules: list[nn.Module]  # switched to eval at each step
    measure: Measure | None  # None when the call is not sampled
    call: int
    look: Look  # for the leak look at the call's end
    net: _net.NetCall | None  # the run-time net's record, on the calls it watches


class FoundModule(NamedTuple):
    """A module a target found, as ``describe`` lists it: the module and how it was found.

    ``how`` is ``"argument 'model'"``, ``"self"``, ``"global 'model'"``, ``"closure 'model'"``,
    ``"default 'model'"``, ``"attribute 'pipe.model' (global)"``, ``"item 'models[0]'
    (argument)"``, ``"guarded module"``, ``"modules= option"``, or
    ``"net: running at file.py:12 in helper"`` for one only the run-time net saw.
    """

    module: nn.Module
    how: str


class Step:
    """What one step of a guarded call changed, for ``Target.leave`` to undo.

    Each change is written here before it is made, so an interrupt between the two
    leaves nothing that ``leave`` cannot see. ``token`` is the mode's (``_modes.enter``).
    """

    __slots__ = ("held", "net", "token", "tracker")

    def __init__(self, held: _eval.Hold | None, net: _net.NetCall | None) -> None:
        self.held = held
        self.net = net
        self.token: Any = None
        self.tracker: Any = None


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
        modules: the modules its calls found (on the calls the run-time net watches:
            the first, then calls 2, 4, 8…), each with how it was found, the run-time
            net's finds included. Only modules still alive are listed.
        net: what the run-time net does for it now: ``"watches calls 1, 2, 4, 8…"``,
            ``"watches every call"``, ``"off (net='off')"``, or ``"off: torch.compile is
            in use in this process"`` (see docs/guarding.md).
    """

    name: str
    kind: Kind
    mode: Literal["inference", "no_grad"]
    reason: str
    calls: int
    policy: Policy
    modules: tuple[FoundModule, ...] = ()
    net: str = ""


class Target:
    """A guarded function, module method or block, with everything decided up front."""

    __slots__ = (
        "_fallback_lock",
        "_next_call",
        "calls",
        "clone",
        "eval_warned",
        "find_modules",
        "found",
        "inference",
        "kind",
        "leak_warned",
        "name",
        "net_every",
        "net_off",
        "net_switch",
        "policy",
        "reason",
        "recorder",
        "remembered",
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
        self.recorder = Recorder(name, kind, policy)
        self.leak_warned = False  # about inference tensors a call left in its modules
        # The run-time net (_net): which calls it watches, and whether it switches what
        # it finds (only with eval on and modules="auto": an explicit list is the user's).
        self.net_every = policy.net == "always"
        self.net_off = policy.net == "off"
        self.net_switch = policy.eval and policy.modules == "auto"
        self.eval_warned = False
        # Modules the net found, switched up front by later calls: weakly, so a model
        # the user drops is freed.
        self.remembered: list[weakref.ref[nn.Module]] = []
        # What describe() lists: id -> (weak module, how), refreshed on watched calls.
        self.found: dict[int, tuple[weakref.ref[nn.Module], str]] = {}
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
        found = []
        for ref, how in list(self.found.values()):
            module = ref()
            if module is not None:
                found.append(FoundModule(module, how))
        if self.net_off:
            net = "off (net='off')"
        elif _net.compiled.in_use:
            net = "off: torch.compile is in use in this process"
        else:
            net = "watches every call" if self.net_every else "watches calls 1, 2, 4, 8…"
        return TargetInfo(
            self.name, self.kind, mode, self.reason, self.calls, self.policy, tuple(found), net
        )

    # -- the run-time net ----------------------------------------------------------------

    def net_call(
        self,
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        modules: list[nn.Module] | None,
    ) -> _net.NetCall | None:
        """The net's record of a call it watches (the first, 2, 4, 8…, or every one: the
        caller decides), or ``None`` once ``torch.compile`` is in use; also notes, for
        ``describe``, what the call's own look found and how."""
        if _net.compiled.in_use:
            return None
        finder = getattr(self.find_modules, "__self__", None)
        labelled = getattr(finder, "labelled", None)
        if labelled is not None:
            labels: list[tuple[nn.Module, str]] = labelled(instance, args, kwargs)
        else:
            how = "guarded module" if self.kind == "module" else "modules= option"
            labels = [(m, how) for m in modules or ()]
        for module, how in labels:
            self._note(module, how)
        return _net.NetCall(self, list(modules or ()), switch=self.net_switch)

    def _note(self, module: nn.Module, how: str) -> None:
        found = self.found
        key = id(module)
        entry = found.get(key)
        if entry is not None and entry[0]() is module:
            return
        if len(found) >= 64:  # bounded: drop the dead, else the oldest
            for k in [k for k, (ref, _) in found.items() if ref() is None] or [next(iter(found))]:
                del found[k]
        found[key] = (weakref.ref(module), how)

    def net_found(self, module: nn.Module, where: str, *, switched: bool) -> None:
        """The net saw ``module`` running in training mode in a call (``_net``)."""
        self._note(module, f"net: running at {where}")
        if switched and not any(r() is module for r in self.remembered):
            self.remembered = [
                *(r for r in self.remembered if r() is not None),
                weakref.ref(module),
            ]
        if not self.eval_warned and (switched or self.switch):
            self.eval_warned = True
            _net.warn(self, module, where, switched=switched)

    def with_remembered(self, modules: list[nn.Module] | None) -> list[nn.Module]:
        """``modules`` and the live modules the net found on earlier calls."""
        alive = [m for m in (r() for r in self.remembered) if m is not None]
        if len(alive) < len(self.remembered):
            self.remembered = [weakref.ref(m) for m in alive]
        return [*(modules or ()), *alive]

    # -- one plain call ------------------------------------------------------------------

    def call(
        self,
        fn: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run one plain call of ``fn`` guarded, measured when the call is sampled.

        In order: find the modules, start the net's watch, the leak look and the measure,
        switch to eval, enter the mode, run, undo each in reverse, look, deliver. The
        steps are written out in this one frame rather than split into helpers as calls
        made of steps are (``begin``, ``enter``, ``leave``, ``end``): a Python call costs
        a tenth of a guarded no-op, which must cost no more than ``@torch.inference_mode()``.

        Every change is recorded (in ``held``, ``token``, ``net``) before it is made, and
        undone twice over: an interrupt that lands at the start of the inner ``finally``
        leaves the outer one to run; each undo is idempotent and cheap when done.
        """
        call = self.calls = self._next_call()
        find = self.find_modules
        modules = find(instance, args, kwargs) if find is not None else None
        if self.remembered:
            modules = self.with_remembered(modules)
        # Which calls the net watches, as in ``begin``: kept out of ``net_call`` so that
        # the unwatched calls pay no Python call for it (a twentieth of a no-op).
        net = (
            self.net_call(instance, args, kwargs, modules)
            if not self.net_off and (self.net_every or not call & (call - 1))
            else None
        )
        recorder = self.recorder
        measure = (
            recorder.begin(
                call, modules, args, kwargs, inference=self.inference, switch=self.switch
            )
            if recorder.sampled()
            else None
        )
        try:
            # The leak look's start (``look_start``, without its record).
            if _hooks.forward_pre_hooks.watchers or _hooks.forward_hooks_always.watchers:
                _leaks.unhook_idle()
            mark = _leaks.landed.seq
            before = _leaks.look_before(modules) if modules and not call & (call - 1) else None
            held = _eval.Hold(modules) if modules and self.switch else None
            inference = self.inference
            token: Any = None
            undone = False
            try:
                try:
                    if net is not None:
                        _net.start(net)
                    if held is not None:
                        _eval.take(held)
                        if measure is not None:
                            measure.switched = held.switched
                    while True:  # twice at most: again under no_grad after a fallback
                        try:
                            try:
                                # _modes.enter, with this frame's local for the token
                                if inference:
                                    token = _InferenceMode(True)
                                elif _is_inference_mode_enabled():
                                    token = _InferenceMode(False)
                                    _set_grad_enabled(False)
                                else:
                                    token = _is_grad_enabled()
                                    _set_grad_enabled(False)
                                result = fn(*args, **kwargs)
                            finally:
                                if token is not None:  # _modes.restore
                                    if token is True or token is False:
                                        _set_grad_enabled(token)
                                    else:
                                        token.__exit__(None, None, None)
                                    token = None
                            break
                        except RuntimeError as error:
                            # Run it again under no_grad: eval is still held, only the
                            # mode changes. Nothing has reached the caller yet.
                            if not inference or self.fall_back(error, measure=measure) != "retry":
                                raise
                            inference = False
                finally:
                    if token is not None:
                        _modes.restore(token)
                    if net is not None:
                        _net.stop(net)
                        if measure is not None:
                            measure.saw_net(net.training, net.switched)
                    if held is not None:
                        _eval.release(held)
                    undone = True
            finally:
                if not undone:  # an interrupt stopped the undo above: finish it (idempotent)
                    if token is not None:
                        _modes.restore(token)
                    if net is not None:
                        _net.stop(net)
                    if held is not None:
                        _eval.release(held)
            if before is not None or _leaks.landed.seq != mark:
                self._look_after(modules, call, mark, before, result)
            # ``deliver``
            if self.clone:
                result = clone_inference_tensors(result)
            elif result is not None and _leaks.remembering():
                _leaks.remember(result, self.name, call)
        except BaseException as error:
            if measure is not None:
                recorder.end(measure, error)
            raise
        if measure is not None:
            recorder.end(measure, None, result)
        return result

    # -- the leak look ---------------------------------------------------------------------

    def look_start(self, call: int, modules: list[nn.Module] | None) -> Look:
        """At a call's start, what ``look_end`` needs to find the inference tensors the
        call leaves in its modules: registrations counted so far, and on calls 1, 2,
        4, 8… a look at the modules (``_leaks.look_before``)."""
        # The last remembered tensor died: this call's modules skip the hook.
        if _hooks.forward_pre_hooks.watchers or _hooks.forward_hooks_always.watchers:
            _leaks.unhook_idle()
        # Also without modules: a call that builds or loads a model registers its tensors.
        before = _leaks.look_before(modules) if modules and not call & (call - 1) else None
        return Look(call, _leaks.landed.seq, modules or [], before)

    def look_end(self, look: Look, result: Any = None) -> None:
        """At a call's end (when it returned): report the new inference tensors it left
        in its modules, in modules it built or in those it returned in ``result``, if it
        registered any or was looked at."""
        if look.before is not None or _leaks.landed.seq != look.registrations:
            self._look_after(look.modules, look.call, look.registrations, look.before, result)

    def _look_after(
        self, modules: list[nn.Module] | None, call: int, mark: int, before: Any, result: Any
    ) -> None:
        warned = _leaks.look_after(
            modules or [], self.name, call, mark, before, warn=not self.leak_warned, result=result
        )
        if warned:
            self.leak_warned = True

    def deliver(self, result: Any, call: int) -> Any:
        """What the caller gets: clones of inference tensors (``outputs="clone"``), or the
        result itself, its inference tensors remembered for the leak sentinel."""
        if self.clone:
            return clone_inference_tensors(result)
        if result is not None and _leaks.remembering():
            _leaks.remember(result, self.name, call)
        return result

    # -- calls made of steps: generators, coroutines, blocks ---------------------------

    def begin(
        self,
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        modules: list[nn.Module] | None = None,
    ) -> Begun:
        """Start a call made of steps: count it, find its modules, start measuring it.

        Returns the modules each step switches to eval, the measure (``None`` when the
        call is not sampled), the call's number, what ``end`` needs to look at the
        modules (``look_start``), and the run-time net's record when it watches the call.
        """
        call = self.calls = self._next_call()
        if modules is None:
            find = self.find_modules
            modules = find(instance, args, kwargs) if find is not None else []
        if self.remembered:
            modules = self.with_remembered(modules)
        net = (
            self.net_call(instance, args, kwargs, modules)
            if not self.net_off and (self.net_every or not call & (call - 1))
            else None
        )
        look = self.look_start(call, modules)
        recorder = self.recorder
        measure = (
            recorder.begin(
                call,
                modules,
                args,
                kwargs,
                inference=self.inference,
                switch=self.switch,
                stepped=True,
            )
            if recorder.sampled()
            else None
        )
        return Begun((modules if self.switch else []), measure, call, look, net)

    def end(
        self,
        measure: Measure | None,
        error: BaseException | None,
        result: Any,
        look: Look | None = None,
        net: _net.NetCall | None = None,
    ) -> None:
        """Finish a call made of steps: look at its modules, emit its event."""
        try:
            if error is None and look is not None:
                self.look_end(look, result)
        finally:
            if measure is not None:
                if net is not None:
                    measure.saw_net(net.training, net.switched)
                self.recorder.end(measure, error, result)

    def enter(
        self,
        modules: list[nn.Module],
        measure: Measure | None = None,
        net: _net.NetCall | None = None,
    ) -> Step:
        """Switch ``modules`` to eval and enter the mode; ``leave`` undoes both.

        Interrupted part way, it undoes what it did before the interrupt goes on.
        """
        step = Step(_eval.Hold(modules) if modules else None, net)
        try:
            if net is not None:
                _net.start(net)
            held = step.held
            if held is not None:
                _eval.take(held)
                if measure is not None:
                    measure.switched = max(measure.switched, held.switched)
            _modes.enter(step, inference=self.inference)
            if measure is not None and measure.tracker is not None:
                step.tracker = measure.tracker
                _memory.resume(step.tracker)
            return step  # in the try: nothing may land between the last change and here
        except BaseException:
            try:
                self.leave(step)
            finally:
                self.leave(step)  # again: finishes a leave an interrupt stopped at its start
            raise

    def run_step(
        self,
        modules: list[nn.Module],
        measure: Measure | None,
        fn: Callable[[], Any],
        net: _net.NetCall | None = None,
    ) -> Any:
        """Run one step of a body (``gen.close``, say) between ``enter`` and ``leave``."""
        step = None
        try:
            try:
                step = self.enter(modules, measure, net)
                return fn()
            finally:
                if step is not None:
                    self.leave(step)
        finally:
            if step is not None:
                self.leave(step)  # again: finishes a leave an interrupt stopped at its start

    def leave(self, step: Step) -> None:
        """Leave the mode and give the modules their flags back, whatever happened.

        Safe to call again on the same step: an interrupt that stops it part way is
        followed by a second call (see ``_steps``), which finishes the rest.
        """
        try:
            tracker = step.tracker
            if tracker is not None:
                _memory.suspend(tracker)  # idempotent
        finally:
            try:
                _modes.leave(step)
            finally:
                try:
                    net = step.net
                    if net is not None and not net.stopped:
                        _net.stop(net)
                finally:
                    held = step.held
                    if held is not None and not held.released:
                        _eval.release(held)

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


def fixed_modules(modules: Sequence[nn.Module]) -> ModuleFinder:
    """A finder for a target whose modules are known up front (a guard, a scope)."""
    found = [_eval.unproxied(m) for m in modules]

    def find(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[nn.Module]:
        return found

    return find


class _AutoFinder:
    """``modules="auto"`` for a decorated function: ``self``, the arguments, and what
    the function's code reaches (``_reach``), each looked at one level deep."""

    __slots__ = ("bound", "names", "reach", "self_obj")

    def __init__(
        self,
        self_obj: Any,
        bound: list[nn.Module],
        reach: _reach.Reach | None,
        names: tuple[str, ...],
    ) -> None:
        self.self_obj = self_obj
        self.bound = bound
        self.reach = reach
        self.names = names  # the parameters, for describe's labels

    def find(self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[nn.Module]:
        """The modules this call reaches, each once."""
        found: list[nn.Module] = []
        owner = instance if instance is not None else self.self_obj
        if owner is not None and not isinstance(owner, type):
            _reach.look(found, owner, deep=True)
        if self.bound:
            found.extend(self.bound)
        for arg in args:
            _reach.look(found, arg)
        if kwargs:
            for arg in kwargs.values():
                _reach.look(found, arg)
        reach = self.reach
        if reach is not None:
            reach.find(found)
        if len(found) > 1:  # the same model reached twice is switched once
            seen: set[int] = set()
            found = [m for m in found if not (id(m) in seen or seen.add(id(m)))]  # type: ignore[func-returns-value]
        return found

    def labelled(
        self, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> list[tuple[nn.Module, str]]:
        """The same look, each module with how it was found (for ``describe``)."""
        found: list[nn.Module] = []
        labels: list[tuple[nn.Module, str]] = []
        owner = instance if instance is not None else self.self_obj
        if owner is not None and not isinstance(owner, type):
            _reach.look(found, owner, labels, "self", deep=True)
        labels.extend((m, "partial argument") for m in self.bound)
        offset = 1 if owner is not None and self.names[:1] in (("self",), ("cls",)) else 0
        for index, arg in enumerate(args):
            position = index + offset
            name = self.names[position] if position < len(self.names) else str(position)
            _reach.look(found, arg, labels, f"argument '{name}'")
        for name, arg in kwargs.items():
            _reach.look(found, arg, labels, f"argument '{name}'")
        if self.reach is not None:
            self.reach.find(found, labels)
        return labels


def _auto_finder(fn: Any, func: Any, self_obj: Any, bound: list[nn.Module]) -> ModuleFinder:
    try:
        names = tuple(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        names = ()
    reach = _reach.reach_of(func)
    # The bound method, not the object: calling an object's Python __call__ costs more.
    return _AutoFinder(self_obj, bound, reach, names).find


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
        bound = [_eval.unproxied(a) for a in frozen if isinstance(a, _Module)]
        return _auto_finder(
            fn, fn.func if isinstance(fn, functools.partial) else func, self_obj, bound
        )
    modules = [_eval.unproxied(s) for s in spec if isinstance(s, _Module)]
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
            found.append(_eval.unproxied(value))
        return found

    return find
