"""The leak level in force: the configured one, or the innermost ``watch_leaks`` block's.

The block itself is in ``_blocks``, which reports on the errors leaving it."""

from __future__ import annotations

import threading
from typing import Literal

from .._config import LeakLevel, current

__all__ = ["ACTIONS", "Action", "blocks", "level", "remembering"]

Action = Literal["warn", "raise"]
ACTIONS: tuple[Action, ...] = ("warn", "raise")


class _Blocks(threading.local):
    """The ``watch_leaks`` blocks open: per thread, and a count over all threads, so that
    a program that opens none pays no thread-local lookup."""

    open_anywhere = 0  # a class attribute: shared by every thread, changed under the lock
    lock = threading.Lock()

    def __init__(self) -> None:
        self.stack: list[tuple[LeakLevel, Action]] = []


blocks = _Blocks()


def level() -> tuple[LeakLevel, Action]:
    """The leak level and action in force in this thread."""
    if _Blocks.open_anywhere and blocks.stack:
        return blocks.stack[-1]
    return current().leaks, "warn"


def remembering() -> bool:
    """Whether the sentinel is on in this thread: the leak level is not ``"off"``, so
    guarded calls remember what they make (``level()`` without building a tuple)."""
    if _Blocks.open_anywhere:
        stack = blocks.stack
        if stack:
            return stack[-1][0] != "off"
    return current().leaks != "off"
