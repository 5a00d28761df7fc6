"""``@gradguard.infer``: the decorator form."""

from __future__ import annotations

import functools
import inspect
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, overload

import wrapt

from . import _compile, _steps
from ._policy import Policy, make_policy
from ._steps import async_generator_call, coroutine_call, generator_call
from ._target import Target, module_finder, underlying

if TYPE_CHECKING:
    from typing_extensions import ParamSpec, Unpack

    from ._policy import Options

    P = ParamSpec("P")
else:
    P = TypeVar("P")  # only type checkers need the ParamSpec

R = TypeVar("R")

# As in _proxy: until gradguard has told dynamo how to run its code, a call looks whether
# torch.compile is in use.
_unprepared = True
_modules = sys.modules

__all__ = ["GuardedFunction", "infer"]


if TYPE_CHECKING:
    _FunctionWrapper = wrapt.FunctionWrapper[..., Any]
else:
    _FunctionWrapper = wrapt.FunctionWrapper


class GuardedFunction(_FunctionWrapper):
    """A function, method or callable object decorated by ``gradguard.infer``.

    Behaves as the original (name, docstring, signature, ``__wrapped__``, binding as a
    method, classmethod or staticmethod) and runs each call through its target.
    """

    def __init__(self, wrapped: Any, wrapper: Any, target: Target) -> None:
        super().__init__(wrapped, wrapper)
        self._self_target = target
        self._self_run = wrapper

    @property
    def _torchdynamo_orig_callable(self) -> Any:
        # Read by torch.compile on what it is given, and by nothing else: the moment to
        # tell dynamo how to run gradguard's code (see _compile). The attribute itself
        # does not exist.
        _compile.prepare()
        raise AttributeError("_torchdynamo_orig_callable")

    def __reduce_ex__(self, protocol: Any) -> str:
        # Pickled by reference, like the function it decorates (its module:qualname names
        # the decorated object), so it crosses to spawned workers and process pools.
        return self.__wrapped__.__qualname__

    def __copy__(self) -> GuardedFunction:
        return self  # functions are immutable to copy; copying one returns it

    def __deepcopy__(self, memo: dict[int, Any]) -> GuardedFunction:
        return self


class _DirectGuardedFunction(GuardedFunction):
    """A ``GuardedFunction`` of a plain function or callable object.

    Called directly (not bound to an instance) it has nothing to bind, so it calls its
    target straight away: wrapt's general ``__call__`` costs twice as much, and the
    no-op guarded call must cost no more than ``@torch.inference_mode()``. Bound calls
    (the function used as a method) still go through wrapt's binding.

    Each one is an instance of its own subclass (``_direct``), whose ``__call__`` holds
    the target's call in a closure: read from the proxy, as an attribute, it would cost a
    twentieth of a no-op call more, since every attribute read on a wrapt proxy goes
    through the proxy's own lookup.
    """

    __slots__ = ()


def _direct_call(direct: Callable[[tuple[Any, ...], dict[str, Any]], Any] | None) -> Any:
    """The ``__call__`` of one ``_DirectGuardedFunction``: ``direct(args, kwargs)``."""

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _unprepared and "torch._dynamo" in _modules:
            _compile.prepare_now()
        return direct(args, kwargs)  # type: ignore[misc]

    # What _compile.register marks on its entries (their code is this one code object,
    # registered once below): a guarded call inside compiled code is a graph break.
    __call__._torchdynamo_disable = True  # type: ignore[attr-defined]
    __call__._torchdynamo_disable_msg = _compile.FULLGRAPH_MESSAGE  # type: ignore[attr-defined]
    return __call__


def _direct(fn: Any, wrapper: Any, target: Target) -> GuardedFunction:
    call = _direct_call(functools.partial(wrapper, fn, None))
    cls = type(
        "GuardedFunction",
        (_DirectGuardedFunction,),
        {"__call__": call, "__slots__": (), "__module__": __name__},
    )
    return cls(fn, wrapper, target)  # type: ignore[no-any-return]


def _default_name(fn: Any) -> str:
    # A partial is named by the function it wraps: its repr would put its arguments (an
    # API key, say) and a memory address into every event.
    while isinstance(fn, functools.partial):
        fn = fn.func
    func, self_obj = underlying(fn)
    if self_obj is not None and not inspect.ismethod(fn):  # a callable object
        cls = type(fn)
        return f"{cls.__module__}:{cls.__qualname__}"
    module = getattr(func, "__module__", None) or "?"
    qualname = getattr(func, "__qualname__", None) or repr(func)
    return f"{module}:{qualname}"


def _check_callable(fn: Any) -> None:
    if isinstance(fn, type):
        msg = (
            f"infer() cannot decorate the class {fn.__qualname__}: it is ambiguous whether "
            "the constructor or the methods should be guarded. Decorate the methods that "
            "run inference (def predict(...)), or guard an instance: gradguard.guard(model)."
        )
        raise TypeError(msg)
    if not callable(fn) and not isinstance(fn, (classmethod, staticmethod)):
        msg = (
            f"infer() decorates functions, methods and callable objects; got {fn!r} "
            f"({type(fn).__name__}). Use @gradguard.infer on a def, or "
            "gradguard.guard(model) for a module."
        )
        raise TypeError(msg)


def decorate(fn: Any, policy: Policy) -> Any:
    """Wrap ``fn`` in a ``GuardedFunction`` running under ``policy``."""
    _check_callable(fn)
    if isinstance(fn, GuardedFunction):  # re-decorating replaces the options, not nests
        fn = fn.__wrapped__
    func = underlying(fn)[0]
    target_fn = fn.__func__ if isinstance(fn, (classmethod, staticmethod)) else fn
    target = Target(
        policy.name or _default_name(fn),
        "function",
        policy,
        (func,),
        module_finder(target_fn, policy),
    )
    if inspect.isasyncgenfunction(func):
        wrapper: Any = functools.partial(async_generator_call, target)
    elif inspect.iscoroutinefunction(func):
        wrapper = functools.partial(coroutine_call, target)
    elif inspect.isgeneratorfunction(func):
        wrapper = functools.partial(generator_call, target)
    else:
        wrapper = target.call  # already (wrapped, instance, args, kwargs): no extra frame
    plain = inspect.isfunction(fn) or not (
        isinstance(fn, (classmethod, staticmethod)) or inspect.ismethod(fn) or inspect.isbuiltin(fn)
    )
    return _direct(fn, wrapper, target) if plain else GuardedFunction(fn, wrapper, target)


@overload
def infer(fn: Callable[P, R], /) -> Callable[P, R]: ...


@overload
def infer(
    fn: None = None, /, **options: Unpack[Options]
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def infer(fn: Any = None, /, **options: Any) -> Any:
    """Run a function in inference mode, with the modules it uses in eval, then restore both.

    Use it bare or with options. Each call switches the modules it finds (``nn.Module``
    arguments, ``self`` if a module, ``nn.Module`` attributes of ``self``) to eval, runs
    under ``torch.inference_mode()`` (or ``torch.no_grad()`` where the code needs autograd
    inside), and gives back every flag and mode as they were, whatever happens. Works on
    functions, methods, classmethods, staticmethods, callable objects, generators,
    ``async def`` functions and async generators; coroutines and generators have the mode
    on only while their own code runs.

    Options (checked here, so mistakes fail at decoration time):
        mode: ``"auto"`` (default), ``"inference"`` or ``"no_grad"``.
        eval: switch modules to eval for the call (default ``True``).
        modules: ``"auto"`` (default), or the modules, parameter names or ``self``
            attribute names to switch.
        name: the name in logs and messages (default ``module:qualname``).
        outputs: ``"keep"`` (default) or ``"clone"`` to return ordinary tensors that are
            safe to use in autograd later.
        retry: when auto mode finds at run time that the code needs autograd, run the
            call again under no_grad (default ``True``), or re-raise.

    Example::

        @gradguard.infer
        def predict(model, x):
            return model(x).argmax(-1)
    """
    policy = make_policy(options, caller="infer")
    if fn is None:
        return _Decorator(policy)
    return decorate(fn, policy)


_NOT_A_BLOCK = (
    "infer() decorates a function (@gradguard.infer or @gradguard.infer(...) above a def); "
    "it is not a block for `with`. For a block use `with gradguard.scope(model):`, which "
    "takes the same options"
)


class _Decorator:
    """What ``infer(...)`` with options returns: it decorates a function under those
    options. ``with gradguard.infer():``, written as for ``torch.no_grad()``, gets a
    TypeError that says to use ``gradguard.scope`` instead of one about the protocol."""

    __slots__ = ("_policy",)

    def __init__(self, policy: Policy) -> None:
        self._policy = policy

    def __call__(self, fn: Any) -> Any:
        return decorate(fn, self._policy)

    def __enter__(self) -> NoReturn:
        raise TypeError(_NOT_A_BLOCK)

    def __exit__(self, *exc_info: object) -> None:  # never reached: __enter__ raises
        return None

    async def __aenter__(self) -> NoReturn:
        raise TypeError(_NOT_A_BLOCK)

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    def __repr__(self) -> str:
        return f"<gradguard.infer decorator, {self._policy!r}>"


def _prepared() -> None:
    global _unprepared
    _unprepared = False


# Generators and coroutines: each resume of the body goes through _steps' functions.
_compile.register(
    [
        _direct_call(None),  # the code of every _DirectGuardedFunction's __call__
        *(
            function
            for value in list(vars(_steps).values())
            for function in _compile.own_functions(value, _steps.__name__)
        ),
    ],
    _prepared,
)
