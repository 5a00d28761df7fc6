"""``gradguard.scope(...)``: the block form, for ``with`` and ``async with``."""

from __future__ import annotations

import threading
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

from torch import nn

from ._net import NetCall
from ._policy import make_policy
from ._stack import caller_name
from ._target import Step, Target, Watch, _unwrap
from ._telemetry import Measure

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

    from ._policy import Options

__all__ = ["scope"]

# One target per block (its name and options), so the call count and an auto-mode fallback
# carry over from one run of the block to the next.
_targets: dict[tuple[Any, ...], Target] = {}
_targets_lock = threading.Lock()


class _Open(threading.local):
    """The blocks open in this thread, innermost last, each with whether it has exited.

    torch's mode guards must be left in the reverse order of entry. Two ``async with``
    blocks in tasks of one event loop can exit in either order, so a block that exits
    while a later one is still open leaves its mode when that one does.
    """

    def __init__(self) -> None:
        self.blocks: list[list[Any]] = []  # [target, step, exited]


_open = _Open()


class scope:  # used like a function: `with gradguard.scope(model):`
    """Run a block with ``modules`` in eval and under inference mode; restore both after.

    The block pays for one eval switch and one mode switch, however many batches it runs,
    which suits a validation loop. The options are those of ``gradguard.infer``; ``modules``
    may add modules, and the block's name defaults to the function it is written in.

    In auto mode a block cannot be run again: when it fails because it needs autograd
    inside, the error propagates and the next run of the same block uses no_grad.

    ``async with`` works too, with one difference from ``@gradguard.infer`` on an
    ``async def``: torch keeps grad and inference mode per thread, not per task, so the
    mode stays on while the block awaits, and other tasks the event loop runs meanwhile
    see it. Keep awaits out of the block, or move the awaiting code into an ``@infer``
    coroutine, which re-enters the mode at each step.

    Example::

        with gradguard.scope(model):
            for batch in loader:
                total += model(batch).argmax(-1).eq(labels).sum()
    """

    def __init__(self, *models: nn.Module, **options: Unpack[Options]) -> None:
        policy = make_policy(options, caller="scope")
        extra = () if policy.modules == "auto" else policy.modules
        for module in (*models, *extra):
            if not isinstance(module, nn.Module):
                msg = (
                    f"scope() takes nn.Module objects to switch to eval; got {module!r} "
                    f"({type(module).__name__}). Pass the modules themselves: "
                    "gradguard.scope(model, other_model)."
                )
                raise TypeError(msg)
        name = policy.name or caller_name(1)
        key_policy = replace(policy, modules="auto", name=name)
        key = (name, key_policy)
        target = _targets.get(key)
        if target is None:
            with _targets_lock:
                target = _targets.setdefault(key, Target(name, "scope", key_policy, (), None))
        self._target = target
        self._modules = [_unwrap(m) for m in (*models, *extra)]
        self._step: Step | None = None
        self._block: list[Any] = []
        self._measure: Measure | None = None
        self._watch: Watch | None = None
        self._net: NetCall | None = None
        self._inference = target.inference

    def __enter__(self) -> Self:
        if self._step is not None:
            msg = (
                f"gradguard.scope ({self._target.name}) is already entered; "
                "create one scope per block: `with gradguard.scope(model): ...`"
            )
            raise RuntimeError(msg)
        target = self._target
        modules, self._measure, _, self._watch, self._net = target.begin(
            None, (), {}, self._modules
        )
        self._inference = target.inference
        self._step = target.enter(modules, self._measure, self._net)
        self._block = [target, self._step, False]
        _open.blocks.append(self._block)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        step, self._step = self._step, None
        if step is None:
            return
        target, measure = self._target, self._measure
        try:
            self._block[2] = True
            blocks = _open.blocks
            while blocks and blocks[-1][2]:
                done, done_step, _ = blocks.pop()
                done.leave(done_step)
            if exc is not None and self._inference:
                target.fall_back(exc, can_retry=False, measure=measure)  # next run: no_grad
        finally:
            target.end(measure, exc, None, self._watch, self._net)

    async def __aenter__(self) -> Self:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def __repr__(self) -> str:
        return f"<gradguard.scope {self._target.name!r} mode={self._target.info().mode!r}>"
