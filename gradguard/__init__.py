"""gradguard: run PyTorch inference in eval mode under inference mode, and restore it all.

``@gradguard.infer`` guards a function, ``gradguard.guard(model)`` a module and
``gradguard.scope(...)`` a block. Names load on first use, so ``import gradguard`` is
cheap and the log tools never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._config import Settings, configure
    from ._decorate import GuardedFunction, infer
    from ._describe import describe
    from ._errors import (
        EvalWarning,
        FallbackWarning,
        GradguardWarning,
        LeakError,
        LeakWarning,
        TelemetryWarning,
    )
    from ._leaks import Findings, check_module, watch_leaks
    from ._policy import Policy
    from ._proxy import GuardedModule, guard, unguard
    from ._scope import scope
    from ._target import FoundModule, TargetInfo
    from ._telemetry import flush

__all__ = [
    "EvalWarning",
    "FallbackWarning",
    "Findings",
    "FoundModule",
    "GradguardWarning",
    "GuardedFunction",
    "GuardedModule",
    "LeakError",
    "LeakWarning",
    "Policy",
    "Settings",
    "TargetInfo",
    "TelemetryWarning",
    "check_module",
    "configure",
    "describe",
    "flush",
    "guard",
    "infer",
    "scope",
    "unguard",
    "watch_leaks",
]

__version__ = "0.1.0.dev0"

_WHERE = {
    "EvalWarning": "._errors",
    "FallbackWarning": "._errors",
    "FoundModule": "._target",
    "GradguardWarning": "._errors",
    "GuardedFunction": "._decorate",
    "GuardedModule": "._proxy",
    "Findings": "._leaks",
    "LeakError": "._errors",
    "LeakWarning": "._errors",
    "Policy": "._policy",
    "Settings": "._config",
    "TargetInfo": "._target",
    "TelemetryWarning": "._errors",
    "check_module": "._leaks",
    "configure": "._config",
    "describe": "._describe",
    "flush": "._telemetry",
    "guard": "._proxy",
    "infer": "._decorate",
    "scope": "._scope",
    "unguard": "._proxy",
    "watch_leaks": "._leaks",
}


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        msg = f"module 'gradguard' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(where, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
