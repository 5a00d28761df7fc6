"""The options shared by ``infer``, ``guard`` and ``scope``, checked once, held in one object."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal, TypedDict

from torch import nn

from ._checks import (
    Check,
    choice,
    fraction,
    needs_otel,
    optional,
    strict_flag,
    unknown_option,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["MODES", "OUTPUTS", "Mode", "Options", "Outputs", "Policy", "make_policy"]

Mode = Literal["auto", "inference", "no_grad"]
Outputs = Literal["keep", "clone"]
Memory = Literal["auto", "peak", "tensors", "off"]
Net = Literal["spaced", "always", "off"]
ModuleSpec = nn.Module | str

MODES: tuple[Mode, ...] = ("auto", "inference", "no_grad")
OUTPUTS: tuple[Outputs, ...] = ("keep", "clone")
MEMORY: tuple[Memory, ...] = ("auto", "peak", "tensors", "off")
NETS: tuple[Net, ...] = ("spaced", "always", "off")


class Options(TypedDict, total=False):
    """Keyword options accepted by ``infer``, ``guard`` and ``scope``."""

    mode: Mode
    eval: bool
    modules: Literal["auto"] | nn.Module | str | Iterable[ModuleSpec]
    name: str | None
    outputs: Outputs
    retry: bool
    log: bool | None
    sample: float | None
    memory: Memory | bool
    sync: bool
    trace: bool | None
    net: Net


@dataclass(frozen=True)
class Policy:
    """What a guarded target does around each call.

    Attributes:
        mode: ``"auto"`` (inference mode unless the code needs gradients inside),
            ``"inference"`` (``torch.inference_mode()``) or ``"no_grad"`` (``torch.no_grad()``).
        eval: switch the target's modules to eval for the call, and back afterwards.
        modules: ``"auto"`` to find modules among the call's arguments and ``self``, or
            the modules, argument names or attribute names to switch.
        name: the target's name in logs and messages; ``None`` means ``module:qualname``.
        outputs: ``"keep"`` returns what the code returned; ``"clone"`` replaces inference
            tensors in the result by ordinary copies, safe to use in autograd later.
        retry: in auto mode, when a call fails under inference mode because it needs
            autograd, run it again once under no_grad (``False`` re-raises instead).
        log: emit an event per call (``None``: as ``gradguard.configure`` says).
        sample: the fraction of calls that emit an event (``None``: as configured).
        memory: ``"auto"`` (the device allocator on accelerators, process RSS on the CPU),
            ``"peak"`` (the same, plus an exact peak, by resetting the peak counter before
            each call: a process-wide side effect), ``"tensors"`` (exact accounting of the
            tensors the call creates; slow, for development) or ``"off"``/``False``.
        sync: on CUDA, wait for the device at the end of each logged call so that its
            event carries ``gpu_ms`` at once, instead of emitting it later.
        trace: an OpenTelemetry span per call (``None``: as ``gradguard.configure`` says;
            needs ``gradguard[otel]``).
        net: the run-time net for modules no static look finds (a model a helper in
            another module uses, one built inside the call): ``"spaced"`` watches the
            first call, then calls 2, 4, 8…; ``"always"`` watches every call (a global
            module hook for the call: about 1.5 µs per module call it runs, plus a few
            µs per call); ``"off"`` never.
    """

    mode: Mode = "auto"
    eval: bool = True
    modules: Literal["auto"] | tuple[ModuleSpec, ...] = "auto"
    name: str | None = None
    outputs: Outputs = "keep"
    retry: bool = True
    log: bool | None = None
    sample: float | None = None
    memory: Memory = "auto"
    sync: bool = False
    trace: bool | None = None
    net: Net = "spaced"

    def merged(self, options: Mapping[str, Any]) -> Policy:
        """Return a copy with ``options`` (already checked) applied over this policy."""
        return replace(self, **options) if options else self


def _name(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        msg = f"{name} must be a non-empty string or None; got {value!r}"
        raise TypeError(msg)
    return value


def _modules(name: str, value: Any) -> Literal["auto"] | tuple[ModuleSpec, ...]:
    if value == "auto":
        return "auto"
    items = (value,) if isinstance(value, (nn.Module, str)) else value
    try:
        specs = tuple(items)
    except TypeError:
        specs = ()
        items = None
    bad = [s for s in specs if not isinstance(s, (nn.Module, str))]
    if items is None or bad:
        shown = bad[0] if bad else value
        msg = (
            f"{name} must be 'auto', an nn.Module, an argument or attribute name, or a list "
            f"of those; got {shown!r} ({type(shown).__name__})"
        )
        raise TypeError(msg)
    return specs


def _trace(name: str, value: Any) -> bool:
    # A strict flag, like every option; then, like the ``trace`` setting, it needs OpenTelemetry.
    return needs_otel(name, strict_flag(name, value))


def _memory(name: str, value: Any) -> Memory:
    if value is False:
        return "off"
    if value is True:
        return "auto"
    return choice(name, value, MEMORY)


def _among(valid: tuple[str, ...]) -> Check:
    def check_choice(name: str, value: Any) -> Any:
        return choice(name, value, valid)

    return check_choice


# What each option accepts; a check is given the option's name for its message.
OPTION_CHECKS: dict[str, Check] = {
    "mode": _among(MODES),
    "eval": strict_flag,
    "modules": _modules,
    "name": _name,
    "outputs": _among(OUTPUTS),
    "retry": strict_flag,
    "log": optional(strict_flag),
    "sample": optional(fraction),
    "memory": _memory,
    "sync": strict_flag,
    "trace": optional(_trace),
    "net": _among(NETS),
}
assert set(OPTION_CHECKS) == {f.name for f in fields(Policy)}


def check_options(
    options: Mapping[str, Any], *, caller: str, keywords: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Validate option names and values; return them normalised.

    Raises ``TypeError`` for an unknown name (with the closest valid one, among the options
    and the ``keywords`` the caller takes besides them) and ``TypeError``/``ValueError`` for
    a bad value, naming the option and the value.
    """
    checked = {}
    for key, value in options.items():
        check = OPTION_CHECKS.get(key)
        if check is None:
            raise unknown_option(caller, key, (*OPTION_CHECKS, *keywords))
        checked[key] = check(key, value)
    return checked


_DEFAULT = Policy()


def make_policy(
    options: Mapping[str, Any], *, caller: str, keywords: tuple[str, ...] = ()
) -> Policy:
    """Build a ``Policy`` from user keyword options, raising early on bad input
    (``keywords``: the caller's other keywords, offered for a misspelt option)."""
    return _DEFAULT.merged(check_options(options, caller=caller, keywords=keywords))
