"""Warning and error classes: one class per kind of trouble, so each can be filtered alone."""

from __future__ import annotations

__all__ = [
    "EvalWarning",
    "FallbackWarning",
    "GradguardError",
    "GradguardWarning",
    "LeakError",
    "LeakWarning",
    "TelemetryWarning",
]


class GradguardWarning(UserWarning):
    """Base class of every warning gradguard emits."""


class FallbackWarning(GradguardWarning):
    """Auto mode switched a target from inference mode to no_grad for good.

    Emitted once per target, the first time its code fails under inference mode in a way
    that shows it needs autograd inside. Pin the mode (``mode="no_grad"``) to silence it.
    """


class EvalWarning(GradguardWarning):
    """A guarded call ran a module in training mode that none of its arguments, globals,
    closure cells, defaults or attributes holds, so ``modules="auto"`` could not see it.

    Emitted once per target by the run-time net, naming the module's class, where it was
    found running and the fix: pass the module in, or name it in ``modules=[...]``.
    """


class TelemetryWarning(GradguardWarning):
    """Logging a call failed; the call itself went on. Emitted once per process."""


class LeakWarning(GradguardWarning):
    """An inference tensor made by a guarded call meets autograd; names the call."""


class GradguardError(Exception):
    """Base class of every error gradguard raises of its own (not for bad arguments, which
    raise ``ValueError`` or ``TypeError``)."""


class LeakError(GradguardError, RuntimeError):
    """``watch_leaks(action="raise")``: the leak that ``LeakWarning`` would report.

    ``str(error)`` and ``error.args`` are the message alone; the data is in attributes:
    ``target`` (the guarded call's name), ``call`` (its number), and ``receiver`` (what the
    tensor met: ``"the Linear module"``, ``"torch operation mse_loss"``). It is a
    ``RuntimeError`` too, as torch's own error for the same leak is. Raised inside a
    ``watch_leaks`` block for torch's error, it has that error as ``__cause__``.
    """

    target: str | None
    call: int | None
    receiver: str | None

    def __init__(
        self,
        message: str,
        *,
        target: str | None = None,
        call: int | None = None,
        receiver: str | None = None,
    ) -> None:
        super().__init__(message)
        # Attributes, not args: a pickled error comes back through LeakError(*args) and
        # then its __dict__, so both the message and the data survive the round trip.
        self.target = target
        self.call = call
        self.receiver = receiver
