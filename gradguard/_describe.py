"""``gradguard.describe``: what gradguard decided for a guarded thing."""

from __future__ import annotations

from typing import Any

from ._decorate import GuardedFunction
from ._proxy import GuardedModule
from ._scope import scope
from ._target import TargetInfo

__all__ = ["describe"]


def describe(guarded: Any, /, method: str | None = None) -> TargetInfo:
    """Return the name, kind, resolved mode and reason of a guarded function, module or scope.

    ``method`` picks one of the methods a guard was given in ``methods=``; by default a
    guarded module reports its ``__call__``/``forward`` target.

    Example::

        >>> gradguard.describe(predict).mode
        'inference'
    """
    if isinstance(guarded, GuardedModule):
        if method is None or method in ("__call__", "forward"):
            return guarded._self_call.info()
        target = guarded._self_targets.get(method)
        if target is None:
            msg = (
                f"describe(): this guard has no guarded method {method!r}; "
                f"its guarded methods: {', '.join(guarded._self_targets) or 'none'}"
            )
            raise ValueError(msg)
        return target.info()
    if isinstance(guarded, scope):
        return guarded._target.info()
    # A decorated function, or one bound to an instance or class (wrapt's bound wrapper).
    wrapper = getattr(guarded, "_self_parent", None) or guarded
    if isinstance(wrapper, GuardedFunction):
        return wrapper._self_target.info()
    msg = (
        f"describe() takes a function decorated with @gradguard.infer, a module from "
        f"gradguard.guard() or a gradguard.scope; got {type(guarded).__name__}"
    )
    raise TypeError(msg)
