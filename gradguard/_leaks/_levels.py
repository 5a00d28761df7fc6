"""The leak level in force: the configured one, or the innermost ``watch_leaks`` block's."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from .._config import LeakLevel, check_leak_level, current

__all__ = ["ACTIONS", "Action", "Level", "blocks", "level", "watch_leaks", "watching"]

Level = LeakLevel
Action = Literal["warn", "raise"]
ACTIONS: tuple[Action, ...] = ("warn", "raise")


class _Blocks(threading.local):
    """The ``watch_leaks`` blocks open: per thread, and a count over all threads, so that
    a program that opens none pays no thread-local lookup."""

    open_anywhere = 0  # a class attribute: shared by every thread, changed under the lock
    lock = threading.Lock()

    def __init__(self) -> None:
        self.stack: list[tuple[Level, Action]] = []


blocks = _Blocks()


def level() -> tuple[Level, Action]:
    """The leak level and action in force in this thread."""
    if _Blocks.open_anywhere and blocks.stack:
        return blocks.stack[-1]
    return current().leaks, "warn"


def watching() -> bool:
    """Whether leaks are watched in this thread (``level()`` without building a tuple)."""
    if _Blocks.open_anywhere:
        stack = blocks.stack
        if stack:
            return stack[-1][0] != "off"
    return current().leaks != "off"


@contextmanager
def watch_leaks(level: Level = "boundary", action: Action = "warn") -> Iterator[None]:
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
    from ._reports import name_block_failure
    from ._strict import Strict

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
