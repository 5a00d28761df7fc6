"""The run-time net: modules a guarded call runs that no static look could find.

``modules="auto"`` finds the models a function's code names (``_reach``), but not a model
a helper in another module uses from its own globals, nor one built or fetched inside the
call. On the calls it watches (the first of each target, then calls 2, 4, 8…, or every
call with ``net="always"``), a guarded call adds the ``"eval"`` watcher to torch's global
forward pre-hook (``_hooks``). Any module that starts its forward in training mode, in
that call's thread, below none of the call's own modules, is switched to eval with its
subtree before it runs (``_eval.take``, so it is given back when the call, or the step,
ends), and the target remembers it, weakly, to switch it up front on later calls. The
watcher is taken out when no watched call runs, so calls the net does not watch, and
module calls outside guarded calls, pay nothing.

What it cannot do: a model only the net can find, first run between two watched calls,
runs as it is until the next watched call.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from threading import get_ident
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from . import _compile, _eval
from ._errors import EvalWarning
from ._hooks import forward_pre_hooks
from ._stack import user_stacklevel

if TYPE_CHECKING:
    from ._target import Target

__all__ = ["Calls", "NetCall", "calls", "compiled", "start", "stop", "warn"]

_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class _Compiled:
    """Whether ``torch.compile`` has compiled anything in this process: the net then
    watches no call.

    dynamo guards a compiled graph on torch's global module hooks; a hook put in for the
    calls the net watches (1, 2, 4, 8…) and taken out for the others would make it
    recompile the model again and again, and a hook in while it traces would break its
    graph at every module. Models no look at the code finds are then not switched: name
    them with ``modules=[...]`` (docs/guarding.md says so; ``describe()`` shows it).

    dynamo being imported is not enough (transformers imports it, for one): the net goes
    off when torch.compile is given a gradguard object or a compiled module is guarded
    (``_compile.prepare``), when dynamo starts any compile (its start callback, from the
    moment gradguard is prepared for dynamo), or at once if it had compiled something
    before that.
    """

    in_use = False

    def on_compile(self) -> None:
        """torch.compile is given a gradguard object, or a compiled module is guarded."""
        _Compiled.in_use = True

    def on_prepared(self) -> None:
        """gradguard is prepared for dynamo (``_compile``): dynamo is loaded."""
        if _Compiled.in_use:
            return
        try:
            from torch._dynamo.callback import callback_handler
            from torch._dynamo.utils import counters
        except ImportError:  # a torch without them: any use of dynamo counts
            _Compiled.in_use = True
            return
        if counters["frames"]["total"]:  # something was compiled already
            _Compiled.in_use = True
            return
        if self._started not in callback_handler.start_callbacks:
            callback_handler.register_start_callback(self._started)

    def _started(self, args: Any) -> None:
        _Compiled.in_use = True
        from torch._dynamo.callback import callback_handler

        if self._started in callback_handler.start_callbacks:
            callback_handler.remove_start_callback(self._started)  # needed once only

    def reset(self) -> None:
        """As if nothing had been compiled (for tests): the net is on until dynamo next
        starts a compile."""
        _Compiled.in_use = False
        if "torch._dynamo.callback" in sys.modules:
            from torch._dynamo.callback import callback_handler

            if self._started not in callback_handler.start_callbacks:
                callback_handler.register_start_callback(self._started)


compiled = _Compiled()


class NetCall:
    """One watched call (or step): what the net found running in it and what it switched."""

    __slots__ = (
        "covered",
        "held",
        "roots",
        "step_switched",
        "stopped",
        "switch",
        "switched",
        "target",
        "thread",
        "training",
    )

    def __init__(self, target: Target, roots: list[nn.Module], *, switch: bool) -> None:
        self.target = target
        self.roots = roots
        # Switch what it finds: eval=True and modules="auto". Otherwise it only counts
        # (and, with an explicit modules= list, warns).
        self.switch = switch
        self.thread = get_ident()
        # ids of the modules below the call's own roots and below what the net found:
        # computed when a first training module is seen, not on every watched call.
        self.covered: set[int] | None = None
        self.held: list[_eval.Hold] = []
        self.training = 0  # modules seen starting their forward in training mode
        # Modules it switched to eval: in this step, and the most in any step of the call
        # (a call made of steps finds, and switches, the same model at each step).
        self.step_switched = 0
        self.switched = 0
        self.stopped = False  # set once stop() has finished

    def saw(self, module: nn.Module) -> None:
        """A module starts its forward in training mode inside this call."""
        covered = self.covered
        if covered is None:
            covered = self.covered = {id(m) for r in self.roots for m in _eval.submodules(r)}
        key = id(module)
        if key in covered:  # one of the call's own (eval=False): counted already
            return
        covered.update(id(m) for m in _eval.submodules(module))
        where = _where()
        if self.switch:
            held = _eval.Hold([module])
            self.held.append(held)  # in hand before anything changes
            _eval.take(held)
            self.step_switched += held.switched
            self.switched = max(self.switched, self.step_switched)
        else:
            self.training += 1
        self.target.net_found(module, where, switched=self.switch)


def _where() -> str:
    """``file:line in function`` of the code that called the module (outside torch)."""
    frame: Any = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith((_TORCH_DIR, _PACKAGE_DIR)):
        frame = frame.f_back
    if frame is None:
        return "?"
    code = frame.f_code
    name = getattr(code, "co_qualname", code.co_name)
    return f"{os.path.basename(code.co_filename)}:{frame.f_lineno} in {name}"


def _watcher(module: nn.Module, args: Any) -> None:
    if not module.training:  # the common case, first: a module in eval is no news
        return
    running = calls.by_thread.get(get_ident())
    if running:
        running[-1].saw(module)


class Calls:
    """The watched calls running now, per thread, under one lock; the ``"eval"`` watcher
    is on torch's forward pre-hook while there is one.

    One per process (``calls``); the module's ``start`` and ``stop`` are its methods.
    """

    __slots__ = ("by_thread", "lock")

    def __init__(self) -> None:
        # Innermost last. The hook looks only at its own thread's: a module in another
        # thread is never touched.
        self.by_thread: dict[int, list[NetCall]] = {}
        # Reentrant: an interrupted step must never wait on itself. Replaced in a forked
        # child (``after_fork_in_child``).
        self.lock = threading.RLock()

    def idle(self) -> bool:
        """Whether no watched call runs and the watcher is off torch's hook."""
        return not self.by_thread and "eval" not in forward_pre_hooks.watchers

    def start(self, net: NetCall) -> None:
        """Watch module calls in this thread for ``net`` until ``stop(net)``."""
        net.stopped = False  # again, for the next step of a call made of steps
        net.step_switched = 0
        with self.lock:
            running = self.by_thread.get(net.thread)
            if running is None:
                running = self.by_thread[net.thread] = []
            running.append(net)
            forward_pre_hooks.add("eval", _watcher)

    def stop(self, net: NetCall) -> None:
        """Stop watching for ``net`` and give back what it switched. Idempotent."""
        try:
            self._stop(net)
        except BaseException:
            self._stop(net)  # interrupted part way: each step is idempotent, finish it
            raise

    def _stop(self, net: NetCall) -> None:
        with self.lock:
            by_thread = self.by_thread
            running = by_thread.get(net.thread)
            if running is not None:
                if net in running:
                    running.remove(net)
                if not running:
                    del by_thread[net.thread]
            if not by_thread:
                forward_pre_hooks.discard("eval")
        for held in net.held[::-1]:
            if not held.released:
                _eval.release(held)
        # A call made of steps starts again at its next step: what was found is released
        # now, and found (and switched) again if it runs again.
        net.held = []
        net.covered = None
        net.stopped = True

    def reset(self) -> None:
        """Forget every watched call and take the watcher off (for tests); what they
        switched is the eval registry's to give back (``_eval.reset()``)."""
        with self.lock:
            self.by_thread.clear()
            forward_pre_hooks.discard("eval")

    def after_fork_in_child(self) -> None:
        """In a forked child, forget the watched calls of the parent's other threads."""
        self.lock = threading.RLock()
        me = get_ident()
        by_thread = self.by_thread
        for thread in [t for t in by_thread if t != me]:
            del by_thread[thread]  # their holds are ended by _eval's own at-fork handler
        if not by_thread:
            forward_pre_hooks.discard("eval")


calls = Calls()
start = calls.start
stop = calls.stop


def warn(target: Target, module: nn.Module, where: str, *, switched: bool) -> None:
    """The once-per-target ``EvalWarning`` of what the net found."""
    kind = type(module)
    ran = f"{target.name} ran a {kind.__module__}.{kind.__qualname__} in training mode at {where}"
    if switched:
        msg = (
            f"gradguard: {ran}, which none of its arguments, globals, closure cells, "
            "defaults or attributes holds; gradguard switched it to eval for the call and "
            "switches it up front from now on, but a call the run-time net does not watch "
            "runs such a model as it is until then. Say so up front: "
            + (
                "name it in the block: gradguard.scope(model, ...)"
                if target.kind == "scope"
                else "pass the model to the function, or name it: "
                "@gradguard.infer(modules=[model, ...])"
            )
            + "; for a model loaded or built inside the call, which nothing can name up "
            "front, net='always' watches every call."
        )
    else:
        msg = (
            f"gradguard: {ran}, which modules= does not name, so it ran in training mode. "
            "Add it to the list: modules=[..., model], or leave modules='auto'."
        )
    warnings.warn(msg, EvalWarning, stacklevel=user_stacklevel((_TORCH_DIR,)))


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=calls.after_fork_in_child)

_compile.register((), compiled.on_prepared)
_compile.on_compile(compiled.on_compile)
