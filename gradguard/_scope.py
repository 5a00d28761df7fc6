"""``gradguard.scope(...)``: the block form, for ``with`` and ``async with``."""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, NoReturn

from torch import nn

from . import _eval, _leaks
from ._net import NetCall
from ._policy import make_policy
from ._stack import caller_name
from ._target import Look, Step, Target
from ._telemetry import Measure

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

    from ._policy import Options

__all__ = ["open_blocks", "scope", "targets"]


class _Targets:
    """One target per block (its name and options), so the call count and an auto-mode
    fallback carry over from one run of the block to the next.

    Bounded, least recently used first out: ``scope(name=f"request-{i}")`` makes a new
    name per request, and a target per name kept for good would grow without end. A
    block whose target was dropped starts again from call 1 (and auto mode again).
    """

    __slots__ = ("_lock", "limit", "targets")

    def __init__(self, limit: int = 512) -> None:
        self.limit = limit
        self.targets: OrderedDict[tuple[Any, ...], Target] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...], make: Callable[[], Target]) -> Target:
        """The target of ``key``, made with ``make`` the first time."""
        targets = self.targets
        with self._lock:
            target = targets.get(key)
            if target is None:
                target = targets[key] = make()
                if len(targets) > self.limit:
                    targets.popitem(last=False)
            else:
                targets.move_to_end(key)
            return target

    def reset(self) -> None:
        """Forget every block's target (for tests, and in a forked child's fresh lock)."""
        self._lock = threading.Lock()
        self.targets.clear()

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a thread of the parent may have held it


targets = _Targets()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=targets.after_fork_in_child)


class _Block:
    """A block open in this thread: its target, its step, and whether it has exited."""

    __slots__ = ("exited", "step", "target")

    def __init__(self, target: Target, step: Step) -> None:
        self.target = target
        self.step = step
        self.exited = False


class _Open(threading.local):
    """The blocks open in this thread, innermost last, each with whether it has exited.

    torch's mode guards must be left in the reverse order of entry. Two ``async with``
    blocks in tasks of one event loop can exit in either order, so a block that exits
    while a later one is still open leaves its mode when that one does.
    """

    def __init__(self) -> None:
        self.blocks: list[_Block] = []

    def reset(self) -> None:
        """Forget the blocks open in this thread (for tests)."""
        self.blocks.clear()


open_blocks = _Open()


def _leave_exited() -> None:
    """Leave the innermost blocks of this thread that have exited, innermost first.

    A block is taken off the list only once it has been left, so a leave an interrupt
    stopped is done again (``Target.leave`` is idempotent).
    """
    blocks = open_blocks.blocks
    while blocks and blocks[-1].exited:
        done = blocks[-1]
        done.target.leave(done.step)
        blocks.pop()


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
        self._target = target = targets.get(
            key, lambda: Target(name, "scope", key_policy, (), None)
        )
        self._modules = [_eval.unproxied(m) for m in (*models, *extra)]
        self._step: Step | None = None
        self._block: _Block | None = None
        self._measure: Measure | None = None
        self._look: Look | None = None
        self._net: NetCall | None = None
        self._thread = 0
        self._inference = target.inference
        self._call = 0
        self._locals: _leaks.LocalsBefore | None = None  # for what the block leaves behind

    def __enter__(self) -> Self:
        if self._step is not None:
            msg = (
                f"gradguard.scope ({self._target.name}) is already entered; "
                "create one scope per block: `with gradguard.scope(model): ...`"
            )
            raise RuntimeError(msg)
        target = self._target
        modules, self._measure, self._call, self._look, self._net = target.begin(
            None, (), {}, self._modules
        )
        frame = sys._getframe(1)
        if frame.f_code is _AENTER:  # async with: the frame the block is written in
            frame = frame.f_back  # type: ignore[assignment]
        self._locals = _leaks.locals_before(frame)
        self._inference = target.inference
        self._thread = threading.get_ident()
        # An interrupt landing anywhere here must leave nothing open: `with` does not
        # call __exit__ when __enter__ raises, so the block undoes its own entry.
        try:
            try:
                self._step = target.enter(modules, self._measure, self._net)
                self._block = block = _Block(target, self._step)
                open_blocks.blocks.append(block)
                return self
            except BaseException as error:
                self._close(error)
                raise
        except BaseException as error:
            self._close(error)  # again: finishes a close an interrupt stopped
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            try:
                block = self._block
                if self._step is None or block is None:
                    return
                block.exited = True
                _leave_exited()
                if exc is not None and self._inference:  # next run: no_grad
                    self._target.fall_back(exc, can_retry=False, measure=self._measure)
            finally:
                self._close(exc)
        finally:
            self._close(exc)  # again: finishes a close an interrupt stopped at its start

    def __del__(self) -> None:
        # Python checks for signals as a function starts, __exit__ too: an interrupt there
        # propagates before any line of it runs, and `with` gives no second chance. The
        # block object then dies as the exception unwinds the user's frame (unless bound
        # with `as`), and closes itself here, in its own thread, before anyone sees it.
        # getattr: __init__ may have failed (bad options) before setting anything
        if getattr(self, "_step", None) is not None and self._thread == threading.get_ident():
            try:
                self._close(None)
            except Exception:
                return

    def _close(self, exc: BaseException | None) -> None:
        """Mark the block exited, leave what can be left, emit its event. Idempotent."""
        step = self._step
        if step is None:
            return
        block = self._block
        if block is not None and any(b is block for b in open_blocks.blocks):
            block.exited = True
            _leave_exited()
        else:  # entered only part way: never listed in the open blocks
            self._target.leave(step)
        self._step = None
        try:
            if exc is None and self._locals is not None:
                _leaks.remember_locals(self._locals, self._target.name, self._call)
        finally:
            self._locals = None  # the frame: not kept past the block
            self._target.end(self._measure, exc, None, self._look, self._net)

    async def __aenter__(self) -> Self:
        return self.__enter__()

    def __call__(self, fn: object) -> NoReturn:
        # ``@torch.no_grad()`` decorates; ``@gradguard.scope(model)`` would otherwise fail
        # with "'scope' object is not callable", which does not say what to write.
        msg = (
            "scope() is for a `with` block (with gradguard.scope(model): ...), not a "
            f"decorator; got {fn!r}. To guard a function, decorate it with "
            "@gradguard.infer (it takes the same options); for a module, gradguard.guard(model)"
        )
        raise TypeError(msg)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def __repr__(self) -> str:
        return f"<gradguard.scope {self._target.name!r} mode={self._target.info().mode!r}>"


_AENTER = scope.__aenter__.__code__
