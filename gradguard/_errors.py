"""Warning and error classes: one class per kind of trouble, so each can be filtered alone."""

from __future__ import annotations

__all__ = ["FallbackWarning", "GradguardWarning", "LeakError", "LeakWarning", "TelemetryWarning"]


class GradguardWarning(UserWarning):
    """Base class of every warning gradguard emits."""


class FallbackWarning(GradguardWarning):
    """Auto mode switched a target from inference mode to no_grad for good.

    Emitted once per target, the first time its code fails under inference mode in a way
    that shows it needs autograd inside. Pin the mode (``mode="no_grad"``) to silence it.
    """


class TelemetryWarning(GradguardWarning):
    """Logging a call failed; the call itself went on. Emitted once per process."""


class LeakWarning(GradguardWarning):
    """An inference tensor made by a guarded call meets autograd; names the call."""


class LeakError(RuntimeError):
    """``watch_leaks(action="raise")``: the leak that ``LeakWarning`` would report."""
