"""``gradguard.guard(model)``: a transparent proxy whose calls are guarded."""

from __future__ import annotations

import copy
import difflib
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import wrapt
from torch import nn

from . import _compile, _eval
from ._policy import Policy, make_policy
from ._target import ModuleFinder, Target, fixed_modules

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ._policy import Options

__all__ = ["GuardedModule", "guard", "unguard"]

M = TypeVar("M", bound=nn.Module)

# Until gradguard has told dynamo how to run its code (_compile.prepare), a call looks
# whether torch.compile is in use: a bool and, only while dynamo is loaded and nothing
# has prepared yet, one dict lookup.
_unprepared = True
_modules = sys.modules

# nn.Module methods that return the module itself: called through the proxy they return
# the proxy, so `model = gradguard.guard(model).to(device)` keeps the guard.
_RETURNS_SELF = (
    "to",
    "cuda",
    "cpu",
    "xpu",
    "mtia",
    "ipu",
    "type",
    "float",
    "double",
    "half",
    "bfloat16",
    "to_empty",
    "apply",
    "share_memory",
    "train",
    "eval",
    "requires_grad_",
)


_NOT_A_BLOCK = (
    "a guarded {} is not a context manager: guard() wraps a module so that each call to "
    "it runs guarded; call it (model(x)), or for a block use `with gradguard.scope(model):`"
)

if TYPE_CHECKING:
    _ObjectProxy = wrapt.ObjectProxy[nn.Module]
else:
    _ObjectProxy = wrapt.ObjectProxy


class GuardedModule(_ObjectProxy):
    """An ``nn.Module`` whose calls run guarded: eval, inference mode, everything restored.

    It is the module for every other purpose: ``isinstance`` checks, attribute reads and
    writes, ``state_dict()`` (same keys, no prefix), parameters, hooks. gradguard's own
    state lives on the proxy under wrapt's ``_self_`` prefix, never in the module.

    What a proxy cannot hide: ``type(g)`` is ``GuardedModule``; ``g is model`` is false.
    ``copy.copy``/``copy.deepcopy`` return a guarded copy (a deep copy guards a deep copy of
    the module), and pickling, ``torch.save(g)`` included, stores the module with its
    options, so loading gives back a guarded module; saving ``g.state_dict()`` is still the
    portable way.
    """

    def __init__(self, module: nn.Module, policy: Policy, methods: tuple[str, ...]) -> None:
        super().__init__(module)
        self._self_policy = policy
        self._self_methods = methods
        name = policy.name or f"{type(module).__module__}:{type(module).__qualname__}"
        find = _policy_modules(module, policy)
        forward = type(module).forward
        self._self_call = Target(name, "module", policy, (forward,), find)
        self._self_targets = {
            m: Target(f"{name}.{m}", "module", policy, (getattr(module, m),), find) for m in methods
        }
        # What a call runs: the module, or for torch.compile(model)'s wrapper, the same
        # call without torch's warning about gradguard's own global hooks.
        self._self_run: Any = module
        if _compile.is_compiled(module):
            _compile.prepare()
            if "_orig_mod" in module._modules:
                self._self_run = _compile.quiet_call(module)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if _unprepared and "torch._dynamo" in _modules:
            _compile.prepare_now()
        return self._self_call.call(self._self_run, None, args, kwargs)

    @property
    def _torchdynamo_orig_callable(self) -> Any:
        # Read by torch.compile (and torch.compiler.disable) on what it is given, and by
        # nothing else: the moment to tell dynamo how to run gradguard's code, and to give
        # it a frame it compiles. A guard wraps nothing compiled: the attribute itself does
        # not exist.
        _compile.prepare()
        if self._self_run is self.__wrapped__:
            self._self_run = _compile.traced_entry(self.__wrapped__)
        raise AttributeError("_torchdynamo_orig_callable")

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """The module's ``compile()`` (compiles it in place); the guard stays around it."""
        _compile.prepare()
        self.__wrapped__.compile(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The module's ``forward``, guarded like a call."""
        return self._self_call.call(self.__wrapped__.forward, None, args, kwargs)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.__wrapped__, name)
        if name.startswith("_self_"):
            return attribute
        target = self._self_targets.get(name)
        if target is not None:
            return _GuardedMethod(target, attribute, self)
        if name in _RETURNS_SELF:
            return _ReturnsProxy(self, attribute)
        return attribute

    # wrapt hands ``with``/``async with`` to the module, whose nn.Module.__getattr__ then
    # fails with an AttributeError on '__enter__'; someone used to ``with torch.no_grad():``
    # gets a TypeError that says what to write instead. A module that is itself a context
    # manager still is one behind the proxy.
    def __enter__(self) -> Any:
        module = self.__wrapped__
        enter = getattr(type(module), "__enter__", None)  # looked up on the type, as `with`
        if enter is None:
            raise TypeError(_NOT_A_BLOCK.format(type(module).__name__))
        return enter(module)

    async def __aenter__(self) -> Any:
        module = self.__wrapped__
        enter = getattr(type(module), "__aenter__", None)
        if enter is None:
            raise TypeError(_NOT_A_BLOCK.format(type(module).__name__))
        return await enter(module)

    def __repr__(self) -> str:
        options = _options_repr(self._self_policy, self._self_methods)
        return f"gradguard.guard({self.__wrapped__!r}{options})"

    def __copy__(self) -> GuardedModule:
        return GuardedModule(self.__wrapped__, self._self_policy, self._self_methods)

    def __deepcopy__(self, memo: dict[int, Any]) -> GuardedModule:
        module = copy.deepcopy(self.__wrapped__, memo)
        return GuardedModule(module, self._self_policy, self._self_methods)

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return _restore, (self.__wrapped__, self._self_policy, self._self_methods)

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__reduce_ex__(2)


def _restore(module: nn.Module, policy: Policy, methods: tuple[str, ...]) -> GuardedModule:
    return GuardedModule(module, policy, methods)


class _GuardedMethod:
    """A module method named in ``methods=``, bound and guarded."""

    __slots__ = ("_method", "_proxy", "_target")

    def __init__(self, target: Target, method: Any, proxy: GuardedModule) -> None:
        self._target = target
        self._method = method
        self._proxy = proxy

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self._target.call(self._method, None, args, kwargs)
        return self._proxy if result is self._proxy.__wrapped__ else result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._method, name)


class _ReturnsProxy:
    __slots__ = ("_method", "_proxy")

    def __init__(self, proxy: GuardedModule, method: Any) -> None:
        self._proxy = proxy
        self._method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self._method(*args, **kwargs)
        return self._proxy if result is self._proxy.__wrapped__ else result


def _submodule(module: nn.Module, name: str) -> nn.Module:
    value = getattr(module, name, None)
    if not isinstance(value, nn.Module):
        what = "no attribute" if value is None else f"a {type(value).__name__} at"
        msg = (
            f"guard(modules=[{name!r}]): {type(module).__name__} has {what} {name!r}; "
            "name a submodule attribute, or pass the module itself"
        )
        raise ValueError(msg)
    return value


def _policy_modules(module: nn.Module, policy: Policy) -> ModuleFinder:
    """How each call finds the modules it switches: checked now, looked up per call.

    Names are looked up again at each call, so a submodule replaced after guarding
    (``net.head = nn.Dropout(0.9)``) is the one switched.
    """
    if policy.modules == "auto":
        return fixed_modules([module])
    specs = policy.modules
    for spec in specs:
        if isinstance(spec, str):
            _submodule(module, spec)  # fail now, at guard time, on a bad name
    if not any(isinstance(spec, str) for spec in specs):
        return fixed_modules([s for s in specs if isinstance(s, nn.Module)])

    def find(instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[nn.Module]:
        return [_eval.unproxied(_submodule(module, s) if isinstance(s, str) else s) for s in specs]

    return find


def _options_repr(policy: Policy, methods: tuple[str, ...]) -> str:
    default = Policy()
    shown = [
        f"{field}={getattr(policy, field)!r}"
        for field in ("mode", "eval", "name", "outputs", "retry", "net")
        if getattr(policy, field) != getattr(default, field)
    ]
    if policy.modules != "auto":
        shown.append(f"modules=<{len(policy.modules)}>")
    if methods:
        shown.append(f"methods={methods!r}")
    return "".join(f", {s}" for s in shown)


def _method_names(methods: Any) -> tuple[str, ...]:
    if isinstance(methods, str):
        return (methods,)
    try:
        names = tuple(methods)
    except TypeError:
        names = None
    if names is None or not all(isinstance(n, str) for n in names):
        msg = (
            "guard(methods=...) takes the names of module methods to guard, a string or a "
            f"list of strings such as methods=('generate',); got {methods!r}"
        )
        raise TypeError(msg)
    return names


def _methods_hint(module: nn.Module, name: str) -> str:
    """What to write instead of ``name``: only methods ``module`` has, so that the
    suggestion never names one it lacks (``generate`` on a ``Linear``)."""
    cls = type(module)
    # Its own methods, not nn.Module's (get_extra_state is no near miss for 'generate').
    base = set(dir(nn.Module)) - {"forward"}
    own = [
        n
        for n in dir(cls)
        if not n.startswith("_") and n not in base and callable(getattr(cls, n, None))
    ]
    close = difflib.get_close_matches(name, own, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    own = [n for n in own if n != "forward"]  # guarded already: calls go through it
    if not own:
        return f"{cls.__name__} has no method besides forward, which guard() guards already"
    own.sort(key=lambda n: (n != "generate", n))  # the usual one first, where there is one
    return "name methods of the module, such as " + ", ".join(map(repr, own[:3]))


def guard(module: M, /, *, methods: Iterable[str] = (), **options: Unpack[Options]) -> M:
    """Return ``module`` behind a transparent proxy whose calls are guarded.

    ``g(x)`` and ``g.forward(x)`` switch the module to eval, run under inference mode (or
    no_grad where its forward needs autograd), and restore every flag and mode afterwards;
    so do the methods named in ``methods`` (``methods=("generate",)`` for Hugging Face
    models). Everything else reaches the module unchanged. Guarding a guarded module
    does not wrap it twice: without options it is returned as it is, with options the
    module inside gets a new proxy with them.

    Example::

        model = gradguard.guard(MyModel().to(device))
        logits = model(batch)          # eval + inference mode, restored afterwards
        model.state_dict().keys()      # the module's own keys
    """
    methods = _method_names(methods)
    given: Any = module  # typed as a module, but users pass anything: check at run time
    if isinstance(given, GuardedModule):
        if not options and not methods:
            return module
        methods = methods or given._self_methods
        given = given.__wrapped__
    if not isinstance(given, nn.Module):
        msg = (
            f"guard() takes an nn.Module; got {type(given).__name__}. For a function or "
            "other callable, use @gradguard.infer; for a block, gradguard.scope(...)."
        )
        raise TypeError(msg)
    for name in methods:
        if not isinstance(name, str) or not callable(getattr(given, name, None)):
            msg = (
                f"guard(methods=...): {type(given).__name__} has no method {name!r}; "
                f"{_methods_hint(given, name)}"
            )
            raise ValueError(msg)
    policy = make_policy(options, caller="guard", keywords=("methods",))
    return GuardedModule(given, policy, methods)  # type: ignore[return-value]


def unguard(module: M, /) -> M:
    """Return the module behind ``gradguard.guard``; a plain module comes back as it is."""
    given: Any = module
    if isinstance(given, GuardedModule):
        return given.__wrapped__  # type: ignore[return-value]
    if isinstance(given, nn.Module):
        return module
    msg = (
        f"unguard() takes a module from gradguard.guard() (or a plain nn.Module); got "
        f"{type(given).__name__}. A decorated function's original is its __wrapped__."
    )
    raise TypeError(msg)


def _prepared() -> None:
    global _unprepared
    _unprepared = False


_compile.register(
    [
        GuardedModule.__call__,
        GuardedModule.forward,
        _GuardedMethod.__call__,
        # Every call, plain or made of steps, reaches the user's code through these.
        Target.call,
        Target.run_step,
    ],
    _prepared,
    GuardedModule,
)
