"""``watch_leaks``: a block that watches at a level of its own, and names torch's errors
about inference tensors as they leave it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from .._config import LeakLevel, check_leak_level
from ._levels import ACTIONS, Action, _Blocks, blocks
from ._reports import name_block_failure
from ._strict import Strict

__all__ = ["watch_leaks"]


@contextmanager
def watch_leaks(level: LeakLevel = "boundary", action: Action = "warn") -> Iterator[None]:
    """Watch for leaks at ``level`` in this block, and warn or raise (``action``).

    With ``action="raise"``, torch's own error about an inference tensor that a guarded
    call made leaves the block as a ``LeakError`` naming that call, with torch's error as
    its cause; ``level="strict"`` also checks every torch operation in the block.

    Example::

        with gradguard.watch_leaks(action="raise"):
            train_step(student, teacher_out)   # LeakError names the target that made it
    """
    check_leak_level("level", level, block=True)
    if action not in ACTIONS:
        msg = f"action must be 'warn' or 'raise'; got {action!r}"
        raise ValueError(msg)
    with _Blocks.lock:
        _Blocks.open_anywhere += 1
    blocks.stack.append((level, action))
    try:
        if level == "strict":
            with Strict():
                yield
        else:
            yield
    except RuntimeError as error:
        name_block_failure(error, level, action)  # raises LeakError under action="raise"
        raise
    finally:
        blocks.stack.pop()
        with _Blocks.lock:
            _Blocks.open_anywhere -= 1
