"""What the sentinel says: warnings, ``LeakError``, ``gradguard.leak`` events, and the note
it adds to torch's own error.

Two kinds of signal. Where a failure is certain before it happens (a parameter or buffer a
guarded call left as an inference tensor, in a module about to train), the sentinel warns
first. Everywhere else only torch knows whether it fails: ``nn.KLDivLoss(log_target=True)``
takes a teacher's log-probabilities and saves only what it computed from them, and trains.
There the sentinel waits for torch's error and names the call in it, as the error
propagates out of a module call or a ``watch_leaks`` block, which cannot be a false alarm.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from types import FrameType, TracebackType
from typing import Any, NamedTuple

import torch

from .._config import LeakLevel
from .._errors import GradguardWarning, LeakError, LeakWarning
from .._outputs import shallow_tensors
from .._stack import user_stacklevel
from ._levels import Action, level
from ._registry import Origin, origin_of

__all__ = [
    "TORCH_DIR",
    "attach_note",
    "find_origin",
    "internal_error",
    "name_block_failure",
    "name_module_failure",
    "report_op",
    "report_own",
    "report_resident",
]

TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_Tensor = torch.Tensor
_NOTES = sys.version_info >= (3, 11)  # exception notes, shown under the traceback
_MAX_FRAMES = 64  # a traceback deeper than this is searched from its innermost end only
_FIX = (
    "Fix: give that target mode='no_grad' or outputs='clone', or use tensor.clone() made "
    "outside inference mode."
)


def _warn(msg: str) -> None:
    warnings.warn(msg, LeakWarning, stacklevel=user_stacklevel(extra_dirs=(TORCH_DIR,)))


def _emit(origin: Origin, receiver: str, msg: str) -> None:
    from .._telemetry import emit_leak

    emit_leak(origin.target, origin.call, receiver, msg)


def _leak_error(msg: str, origin: Origin, receiver: str) -> LeakError:
    return LeakError(msg, target=origin.target, call=origin.call, receiver=receiver)


# --- before the failure: where it is certain, or where the user asked (strict) -----------


def report_op(origin: Origin, receiver: str, action: Action, *, in_place: bool) -> None:
    """Strict mode: a remembered inference tensor reaches a torch operation."""
    if in_place:
        what = (
            f"is updated in place by {receiver} outside inference mode, which torch refuses "
            "('Inplace update to inference tensor outside InferenceMode')"
        )
    else:
        what = (
            f"enters {receiver} while autograd records a graph: torch fails ('Inference "
            "tensors cannot be saved for backward') wherever the graph must keep it"
        )
    msg = f"gradguard: an inference tensor made by {origin.describe()} {what}. {_FIX}"
    _emit(origin, receiver, msg)
    if action == "raise":
        raise _leak_error(msg, origin, receiver)
    _warn(msg)


def report_own(module: torch.nn.Module, kind: str, name: str, origin: Origin) -> None:
    """A module is about to train with a parameter or buffer a guarded call left."""
    current, action = level()
    if current == "off":
        return
    receiver = f"{kind} {name!r}"
    msg = (
        f"gradguard: {kind} {name!r} of the {type(module).__name__} module is an inference "
        f"tensor left by {origin.describe()}, and the module is about to train: torch fails "
        "where autograd must save it for backward, or where it is updated in place. Fix: "
        "give that target mode='no_grad', or build the tensor outside inference mode; "
        "gradguard.check_module(model) lists every such tensor."
    )
    _emit(origin, receiver, msg)
    if action == "raise":
        raise _leak_error(msg, origin, receiver)
    _warn(msg)


def report_resident(
    origin: Origin, names: list[str], action: Action, *, warn: bool, built: bool
) -> None:
    """At a call's end: the parameters and buffers it left as inference tensors."""
    listed = ", ".join(names[:5])
    if len(names) > 5:
        listed += f" and {len(names) - 5} more"
    if origin.until > origin.call:
        who = f"{origin.describe()}, or code run between those calls under inference mode, left"
    else:
        who = f"{origin.describe()} left"
    where = "modules it built" if built else "its modules"
    msg = (
        f"gradguard: {who} inference tensors in {where}: {listed}. Training the model "
        "later fails where autograd must save them for backward, or update them in place "
        "(an optimizer step, BatchNorm's running stats). Fix: build them outside inference "
        "mode (in __init__, or under torch.no_grad()), or give that target "
        "mode='no_grad'; gradguard.check_module(model) lists them."
    )
    _emit(origin, listed, msg)
    if action == "raise":
        raise _leak_error(msg, origin, listed)
    if warn:
        _warn(msg)


# --- at the failure: torch's own error, named --------------------------------------------


def _torch_failure(error: BaseException) -> str | None:
    """What torch refused, if ``error`` is its error about an inference tensor."""
    if not isinstance(error, RuntimeError) or isinstance(error, LeakError):
        return None
    text = str(error)
    if "nference tensor" not in text:
        return None
    if "saved for backward" in text:
        return "autograd cannot save it for backward"
    if "nplace update" in text:
        return "it is updated in place outside inference mode"
    return "it is an inference tensor"


def _first_origin(values: Any) -> Origin | None:
    for tensor in shallow_tensors(values):
        if tensor.is_inference():
            origin = origin_of(tensor)
            if origin is not None:
                return origin
    return None


def _module_values(module: torch.nn.Module) -> list[Any]:
    """A module's own tensors: parameters, buffers and plain attributes (``__dict__``)."""
    return [*module._parameters.values(), *module._buffers.values(), *vars(module).values()]


def find_origin(
    traceback: TracebackType | None, args: Any = (), module: torch.nn.Module | None = None
) -> Origin | None:
    """The remembered inference tensor torch most likely failed on.

    Looked for in the locals of the traceback's frames, innermost first (the failing
    operation's caller has the very tensor, and a module's forward has its keyword
    arguments, which torch does not pass to global hooks), in the tensors of a method's
    ``self`` when it is a module (a metric's update), then among the module call's
    positional arguments, then in the module's own tensors.
    """
    frames: list[FrameType] = []
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in reversed(frames[-_MAX_FRAMES:]):
        values = frame.f_locals
        origin = _first_origin(values.values())
        owner = values.get("self")
        if origin is None and isinstance(owner, torch.nn.Module):  # a method's own state
            origin = _first_origin(_module_values(owner))
        if origin is not None:
            return origin
    origin = _first_origin(args)
    if origin is None and module is not None:
        origin = _first_origin(_module_values(module))
    return origin


def attach_note(error: BaseException, note: str) -> None:
    """Add ``note`` to ``error`` where its traceback shows it: an exception note (Python
    3.11+), or the message itself on 3.10, which shows no notes."""
    if _NOTES:
        error.add_note(note)
    elif error.args and isinstance(error.args[0], str):
        error.args = (f"{error.args[0]}\n{note}", *error.args[1:])
    else:
        error.args = (*error.args, note)


_NAMED = "_gradguard_leak"  # the attribute a named torch error carries: a Named


class Named(NamedTuple):
    """What the sentinel said about a torch error it named."""

    message: str
    origin: Origin
    receiver: str


def _name_failure(
    error: BaseException, origin: Origin, receiver: str, what: str, action: Action
) -> Named:
    tensor = f"the inference tensor {origin.name}" if origin.name else "an inference tensor"
    verb = "left" if origin.name else "made"
    msg = (
        f"gradguard: {tensor} {verb} by {origin.describe()} enters {receiver}, where torch "
        f"failed on it: {what}. {_FIX}"
    )
    named = Named(msg, origin, receiver)
    setattr(error, _NAMED, named)
    attach_note(error, msg)
    _emit(origin, receiver, msg)
    # A parameter or buffer was warned about already, when its module was about to train.
    if action == "warn" and not origin.name.startswith(("parameter", "buffer")):
        # A filter that makes it an error: torch's error, which carries the note, goes on.
        with contextlib.suppress(Warning):
            _warn(msg)
    return named


def name_module_failure(error: BaseException, module: torch.nn.Module, args: Any) -> None:
    """torch's error leaves ``module``'s call: name the call that made its tensor."""
    if getattr(error, _NAMED, None) is not None:
        return  # an inner module's call named it already
    what = _torch_failure(error)
    if what is None:
        return
    current, action = level()
    if current == "off":
        return
    origin = find_origin(error.__traceback__, args, module)
    if origin is not None:
        _name_failure(error, origin, f"the {type(module).__name__} module", what, action)


def name_block_failure(error: RuntimeError, current: LeakLevel, action: Action) -> None:
    """torch's error leaves a ``watch_leaks`` block: name the call (if no module call did),
    and under ``action="raise"`` raise it as a ``LeakError``."""
    if current == "off":
        return
    named = getattr(error, _NAMED, None)
    if named is None:
        what = _torch_failure(error)
        if what is None:
            return
        origin = find_origin(error.__traceback__)
        if origin is None:
            return
        named = _name_failure(error, origin, "code in a watch_leaks block", what, action)
    if action == "raise" and isinstance(named, Named):
        raise _leak_error(named.message, named.origin, named.receiver) from error


# --- the sentinel's own failures ----------------------------------------------------------


class _Once:
    """Whether the sentinel's own failure was reported (once per process; ``reset``)."""

    warned = False


def internal_error(error: BaseException) -> None:
    """An error in the sentinel itself: the call goes on; warn once."""
    if _Once.warned:
        return
    _Once.warned = True
    msg = (
        f"gradguard's leak sentinel failed ({type(error).__name__}: {error}) and skipped "
        "a check; the call itself went on. Further failures are not reported. This is a "
        "gradguard bug: please report it with this message; until then "
        "gradguard.configure(leaks='off') turns the sentinel off."
    )
    warnings.warn(msg, GradguardWarning, stacklevel=user_stacklevel(extra_dirs=(TORCH_DIR,)))


def reset() -> None:
    """Report the sentinel's next own failure again (for tests)."""
    _Once.warned = False
