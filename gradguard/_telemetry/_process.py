"""Who is logging: the process, its host and its rank, looked up once and kept.

A forked worker (a DataLoader's, say) is another process: ``Process.forked`` gives it
its own pid and forgets the rank, which its own process group may tell differently.
"""

from __future__ import annotations

import os
import socket
from typing import NamedTuple

import torch

__all__ = ["PROCESS", "Process", "Rank"]


class Rank(NamedTuple):
    """The process's place in a ``torch.distributed`` group; ``None`` without one."""

    rank: int | None
    world_size: int | None


_NO_RANK = Rank(None, None)
_dist_initialized = (
    torch.distributed.is_initialized if torch.distributed.is_available() else lambda: False
)


class Process:
    """The pid, host and (once a process group is up) rank that every event carries."""

    __slots__ = ("_rank", "host", "pid")

    def __init__(self) -> None:
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self._rank: Rank | None = None

    def reset(self) -> None:
        """Look the pid and rank up again (after a fork, and for tests)."""
        self.pid = os.getpid()
        self._rank = None

    forked = reset

    def rank(self) -> Rank:
        """(rank, world size) once torch.distributed is initialised, else (None, None)."""
        known = self._rank
        if known is not None:
            return known
        if _dist_initialized():
            known = self._rank = Rank(
                torch.distributed.get_rank(), torch.distributed.get_world_size()
            )
            return known
        return _NO_RANK

    @staticmethod
    def group_up() -> bool:
        """Whether a ``torch.distributed`` process group is initialised."""
        return bool(_dist_initialized())


PROCESS = Process()
