"""How ``torch.compile`` runs gradguard's code: eagerly, around the compiled model.

Left to itself, dynamo traces into a guard's bookkeeping (locks, clocks, counters, torch's
C++ mode guard): it breaks the graph there, warns, and recompiles at every call because
the call counter changed. So, once ``torch.compile`` is seen in use, gradguard tells
dynamo how to run each of its functions, through the per-code frame strategy that
``torch._dynamo.skip`` and ``torch.compiler.disable`` use:

- the entry points (a guarded module's or function's call, ``Target.call``, the steps of
  generators and coroutines) run eagerly, and the frames they call are compiled as usual:
  the user's model, called inside, compiles into its own graph, in eval and under
  inference mode;
- everything else of gradguard runs eagerly with nothing below it compiled;
- the entry points are also marked as ``torch.compiler.disable``d for code dynamo
  traces: a guarded call inside a compiled function is a graph break around which the
  guard runs eagerly, and under ``fullgraph=True`` the error says what to do.

Importing ``torch._dynamo`` costs about a second, so nothing here runs at
``import gradguard``: ``prepare`` is called when ``torch.compile`` (or
``torch.compiler.disable``) is applied to a guarded module or function (it reads an
attribute only dynamo reads), when a compiled module is guarded, from
``GuardedModule.compile``, and by the first guarded call of a module or plain function
made while dynamo is loaded (a guard called inside a compiled function: dynamo breaks the
graph at it, since the entry points carry ``torch.compiler.disable``'s marks from
import on). Until then each such call checks a flag, and while dynamo is loaded one dict
lookup; afterwards the flag alone.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from torch import nn

from . import _hooks

__all__ = [
    "FULLGRAPH_MESSAGE",
    "is_compiled",
    "on_compile",
    "own_functions",
    "prepare",
    "prepare_code",
    "prepare_now",
    "quiet_call",
    "register",
    "traced_entry",
]

FULLGRAPH_MESSAGE = (
    "gradguard runs its guard eagerly, around compiled code, not inside it. Compile the "
    "model and guard the result, gradguard.guard(torch.compile(model)), or compile the "
    "guarded model, torch.compile(gradguard.guard(model)) (fullgraph=True works there: the "
    "model inside compiles as one graph); call the guarded function outside the compiled "
    "one, or use torch.compile without fullgraph=True to let dynamo break the graph here."
)

_lock = threading.Lock()
_prepared: set[str] = set()  # the gradguard modules whose code dynamo has been told about


class _Registry:
    """What the modules that own the entry points tell this one when they load: the
    functions, what to do once prepared, and the proxy class (pushed, not pulled, so that
    this module imports none of them)."""

    def __init__(self) -> None:
        self.entries: list[Any] = []
        self.on_prepared: list[Callable[[], None]] = []
        self.on_compile: list[Callable[[], None]] = []
        self.proxy_classes: tuple[type, ...] = ()


_registry = _Registry()


def register(
    entries: Iterable[Any],
    on_prepared: Callable[[], None],
    proxy_class: type | None = None,
) -> None:
    """Record entry points (functions through which a guarded call reaches the user's
    code: dynamo must compile what they call, not them) and mark them as
    ``torch.compiler.disable``d for code dynamo traces: a guarded call inside compiled code
    is a graph break, never traced into, and under ``fullgraph=True`` the error says what
    to do. Plain attributes, read by dynamo with ``inspect.getattr_static``: no dynamo
    import. ``on_prepared`` runs once ``prepare`` has (at once if it already has)."""
    for function in entries:
        function._torchdynamo_disable = True
        function._torchdynamo_disable_msg = FULLGRAPH_MESSAGE
        _registry.entries.append(function)
    if proxy_class is not None:
        _registry.proxy_classes += (proxy_class,)
    _registry.on_prepared.append(on_prepared)
    if _prepared:
        prepare_code()  # the new module's code too
        on_prepared()


def own_functions(value: Any, module: str) -> Iterator[Any]:
    """The functions ``value`` defines in ``module``: itself, or a class's methods."""
    if isinstance(value, types.FunctionType) and value.__module__ == module:
        yield value
    elif isinstance(value, type) and value.__module__ == module:
        for member in vars(value).values():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            elif isinstance(member, property):
                yield from (f for f in (member.fget, member.fset, member.fdel) if f)
                continue
            if isinstance(member, types.FunctionType):
                yield member


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and the code of every function and comprehension defined inside it."""
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _codes(constant)


def prepare() -> None:
    """``torch.compile`` is given a gradguard object, or a compiled module is guarded:
    tell dynamo how to run gradguard's functions (``prepare_code``), and the modules that
    asked (``on_compile``) that torch.compile is in use with gradguard."""
    prepare_code()
    for callback in _registry.on_compile:
        callback()


def on_compile(callback: Callable[[], None]) -> None:
    """Call ``callback`` each time ``prepare`` runs (the run-time net turns off then)."""
    _registry.on_compile.append(callback)


def prepare_code() -> None:
    """Tell dynamo how to run gradguard's functions (see the module docstring).

    Idempotent and cheap once done; run again, it covers gradguard modules imported since.
    Does nothing on a torch whose dynamo lacks the frame strategies (it then traces
    gradguard as before).
    """
    loaded = [n for n in list(sys.modules) if n == "gradguard" or n.startswith("gradguard.")]
    if all(n in _prepared for n in loaded):
        _done()  # cheap, and idempotent: each module's callback only sets a flag
        return
    with _lock:
        try:
            from torch._C._dynamo.eval_frame import (
                _FrameAction as FrameAction,
                _FrameExecStrategy as FrameExecStrategy,
                set_code_exec_strategy,
            )
        except ImportError:  # an older torch: no per-code strategies to set
            _prepared.update(loaded)
            _done()
            return
        if not _prepared:
            _watch_compile_wrappers()
        entry_codes = {f.__code__ for f in _registry.entries}
        below_compiled = FrameExecStrategy(FrameAction.SKIP, FrameAction.DEFAULT)
        all_eager = FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP)
        for name in loaded:
            if name in _prepared:
                continue
            module = sys.modules.get(name)
            if module is None:
                continue
            for value in list(vars(module).values()):
                for function in own_functions(value, name):
                    for code in _codes(function.__code__):
                        strategy = below_compiled if code in entry_codes else all_eager
                        set_code_exec_strategy(code, strategy)
            _prepared.add(name)
        _done()


def _done() -> None:
    for callback in _registry.on_prepared:
        callback()


def prepare_now() -> None:
    """``prepare_code`` from a guarded call that finds dynamo loaded and gradguard not
    prepared (dynamo imported is not torch.compile in use: transformers imports it).

    Marked as ``torch.compiler.disable``d: when dynamo traces the call (a guard called
    inside compiled code), it breaks the graph here and runs this eagerly, before it
    reaches anything else of gradguard.
    """
    prepare_code()


prepare_now._torchdynamo_disable = True  # type: ignore[attr-defined]
prepare_now._torchdynamo_disable_msg = FULLGRAPH_MESSAGE  # type: ignore[attr-defined]


def _watch_compile_wrappers() -> None:
    """Make ``torch.compile(guard(model))``'s wrapper quiet about gradguard's own hooks.

    ``OptimizedModule.__call__`` warns whenever a global module hook is installed (they
    fire once more, for the wrapper); the leak boundary's hook is installed while a
    guarded call's outputs live, which in a serving loop is always. The wrapper is seen
    when torch registers the guard in it as ``_orig_mod``, and gets a subclass whose call
    leaves the warning out when the only global hooks are gradguard's.
    """
    try:
        from torch._dynamo.eval_frame import OptimizedModule, _set_in_optimized_module
    except ImportError:  # another torch: its wrapper stays as it is
        return

    module_call = nn.Module.__call__

    class GuardedOptimizedModule(OptimizedModule):
        """``torch.compile(gradguard.guard(model))``: an ``OptimizedModule`` that does not
        warn about gradguard's own global hooks."""

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            if not _only_gradguard_hooks():
                return super().__call__(*args, **kwargs)
            with _set_in_optimized_module():
                return module_call(self, *args, **kwargs)

    GuardedOptimizedModule.__qualname__ = "GuardedOptimizedModule"

    def registered(module: nn.Module, name: str, value: Any) -> None:
        is_wrapper = name == "_orig_mod" and type(module) is OptimizedModule
        if is_wrapper and isinstance(value, _registry.proxy_classes):
            module.__class__ = GuardedOptimizedModule

    nn.modules.module.register_module_module_registration_hook(registered)


def traced_entry(module: nn.Module) -> Any:
    """What a guard that ``torch.compile`` wraps calls: ``module``, or for a module whose
    frames dynamo skips when they start (torch's own, ``nn.Sequential`` say), a small
    function dynamo compiles with the module inlined (``OptimizedModule`` does the same).
    Outside compiled code it costs one Python frame more."""
    from torch._dynamo import external_utils, trace_rules

    forward = getattr(module, "forward", None)
    if isinstance(forward, types.MethodType) and trace_rules.check(forward):
        return external_utils.wrap_inline(module)
    return module


def is_compiled(module: nn.Module) -> bool:
    """Whether ``module`` is ``torch.compile(model)``'s wrapper or was compiled in place
    (``model.compile()``): a check made when guarding, which needs no dynamo import."""
    return "_orig_mod" in module._modules or (
        getattr(module, "_compiled_call_impl", None) is not None
    )


def quiet_call(compiled: nn.Module) -> Any:
    """``compiled(...)`` for a ``torch.compile(model)`` wrapper, without torch's warning
    that a compiled module runs with global hooks when the only ones are gradguard's.

    The warning says the hooks fire once more, for the wrapper; gradguard's own (the leak
    boundary) are made for that. Hooks someone else installed still get the warning.
    """
    try:
        from torch._dynamo.eval_frame import _set_in_optimized_module
    except ImportError:  # another torch: call the wrapper as it is
        return compiled

    module_call = nn.Module.__call__

    def call(*args: Any, **kwargs: Any) -> Any:
        if not _only_gradguard_hooks():
            return compiled(*args, **kwargs)
        with _set_in_optimized_module():
            return module_call(compiled, *args, **kwargs)

    return call


_torch_module = nn.modules.module
# torch's dicts of global hooks, changed in place by torch, so bound once: those gradguard
# never installs into, and those it may (a hook registered with always_call=True has an
# entry in two of them).
_OTHER_HOOKS: tuple[dict[Any, Any], ...] = tuple(
    getattr(_torch_module, name)
    for name in ("_global_backward_pre_hooks", "_global_backward_hooks")
    if hasattr(_torch_module, name)
)
_OWNED_HOOKS: tuple[dict[Any, Any], ...] = tuple(
    getattr(_torch_module, name)
    for name in (
        "_global_forward_pre_hooks",
        "_global_forward_hooks",
        "_global_forward_hooks_always_called",
        "_global_forward_hooks_with_kwargs",
    )
    if hasattr(_torch_module, name)
)


def _only_gradguard_hooks() -> bool:
    """Whether every global module hook installed now is gradguard's (or none is)."""
    for hooks in _OTHER_HOOKS:
        if hooks:
            return False
    owned = _hooks.owned
    for hooks in _OWNED_HOOKS:
        for key in list(hooks):  # a copy: another thread may change the dict meanwhile
            if not owned(key):
                return False
    return True
