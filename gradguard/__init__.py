"""gradguard: run PyTorch inference in eval mode under inference mode, and restore it all.

``@gradguard.infer`` guards a function, ``gradguard.guard(model)`` a module and
``gradguard.scope(...)`` a block. Names load on first use, so ``import gradguard`` is
cheap and the log tools never import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # explicit re-exports, for type checkers: names load lazily
    from ._config import (
        Settings as Settings,
        configure as configure,
    )
    from ._decorate import (
        GuardedFunction as GuardedFunction,
        infer as infer,
    )
    from ._describe import (
        describe as describe,
    )
    from ._errors import (
        EvalWarning as EvalWarning,
        FallbackWarning as FallbackWarning,
        GradguardError as GradguardError,
        GradguardWarning as GradguardWarning,
        LeakError as LeakError,
        LeakWarning as LeakWarning,
        TelemetryWarning as TelemetryWarning,
    )
    from ._export import (
        ExportFinding as ExportFinding,
        ExportFindings as ExportFindings,
        check_export as check_export,
        export as export,
    )
    from ._leaks import (
        Finding as Finding,
        Findings as Findings,
        check_module as check_module,
        watch_leaks as watch_leaks,
    )
    from ._policy import (
        Options as Options,
        Policy as Policy,
    )
    from ._proxy import (
        GuardedModule as GuardedModule,
        guard as guard,
        unguard as unguard,
    )
    from ._scan import (
        ScanFinding as ScanFinding,
        ScanFindings as ScanFindings,
        scan as scan,
    )
    from ._scope import (
        scope as scope,
    )
    from ._target import (
        FoundModule as FoundModule,
        TargetInfo as TargetInfo,
    )
    from ._telemetry import (
        flush as flush,
        prometheus_collector as prometheus_collector,
        report as report,
        stats as stats,
    )


__version__ = "0.1.0.dev0"

# The public names, each with the module it loads from on first use: the one list
# from which __all__ is derived (tests/test_public_api.py checks that the imports for
# type checkers above name the same).
_WHERE = {
    "EvalWarning": "._errors",
    "ExportFinding": "._export",
    "ExportFindings": "._export",
    "FallbackWarning": "._errors",
    "Finding": "._leaks",
    "Findings": "._leaks",
    "FoundModule": "._target",
    "GradguardError": "._errors",
    "GradguardWarning": "._errors",
    "GuardedFunction": "._decorate",
    "GuardedModule": "._proxy",
    "LeakError": "._errors",
    "LeakWarning": "._errors",
    "Options": "._policy",
    "Policy": "._policy",
    "ScanFinding": "._scan",
    "ScanFindings": "._scan",
    "Settings": "._config",
    "TargetInfo": "._target",
    "TelemetryWarning": "._errors",
    "check_export": "._export",
    "check_module": "._leaks",
    "configure": "._config",
    "describe": "._describe",
    "export": "._export",
    "flush": "._telemetry",
    "guard": "._proxy",
    "infer": "._decorate",
    "prometheus_collector": "._telemetry",
    "report": "._telemetry",
    "scan": "._scan",
    "scope": "._scope",
    "stats": "._telemetry",
    "unguard": "._proxy",
    "watch_leaks": "._leaks",
}

__all__ = sorted(_WHERE)


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
