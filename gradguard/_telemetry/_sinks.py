"""Where written events end: gradguard's own JSON-lines file, or the console.

``FileSink`` appends whole lines with one ``write()`` per batch on an ``O_APPEND``
descriptor, so processes sharing a file never interleave inside a line. It loses nothing
it was given short of the disk refusing it:

- a file deleted or rotated away (renamed) is reopened at its path before the next
  batch, as the stdlib's ``WatchedFileHandler`` does;
- a short write (a full disk) is completed; if the disk refuses the rest, at most one
  line is left torn, the lines after it are counted as lost, and the next write starts
  on a fresh line;
- a file that does not end with a newline (a crashed process's torn last line) is
  continued on a fresh line, never glued to it.

Where ``fcntl.flock`` exists, each batch is written, and the file's last byte looked at,
under an exclusive lock on the file: a process opening the file while another one is in
the middle of a write would otherwise see that line half written, take it for a torn
line and start an empty one. (A lock costs two system calls per batch.)
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from io import FileIO
from typing import NamedTuple

from ._process import PROCESS

try:
    import fcntl

    _flock: Callable[[int, int], None] | None = fcntl.flock
    _LOCK_EX, _LOCK_UN = fcntl.LOCK_EX, fcntl.LOCK_UN
except ImportError:  # Windows: no advisory locks; a write is still one append
    _flock, _LOCK_EX, _LOCK_UN = None, 0, 0

__all__ = ["ConsoleSink", "FileSink", "Written"]


class Written(NamedTuple):
    """What became of a batch: lines whole on disk, and lines lost."""

    lines: int
    lost: int


class FileSink:
    """gradguard's own JSON-lines output file, for one process and one path."""

    def __init__(self, template: str, rank: int | None) -> None:
        # An event made before the process group was up has no rank: torchrun's RANK
        # tells it, else it goes to rank 0's file (a process started another way, as
        # torch.multiprocessing.spawn does, learns its rank from the group).
        if rank is None:
            raw = os.environ.get("RANK", "0") or "0"
            try:
                rank = int(raw)
            except ValueError:
                msg = (
                    f"the RANK environment variable must be an integer (torchrun sets it to "
                    f"the process's rank); got {raw!r}. Unset it or set it to 0, 1, ..."
                )
                raise ValueError(msg) from None
        self.template = template
        self.pid = PROCESS.pid
        self.path = template.format(pid=self.pid, rank=rank)
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self.file = self._open()

    def _open(self) -> FileIO:
        # Unbuffered: each write() is one system call of whole lines.
        file = FileIO(self.path, "ab")
        try:
            status = os.fstat(file.fileno())
            self.identity = (status.st_dev, status.st_ino)
            # A file left ending inside a line (a process killed mid-write) is continued
            # on a fresh line; under the lock, another process's write is seen whole.
            with _locked(file):
                self.torn = os.fstat(file.fileno()).st_size > 0 and (_last_byte(self.path) != b"\n")
        except OSError:
            self.identity = (-1, -1)
            self.torn = False
        return file

    def stale(self, template: str) -> bool:
        """Whether events need another file: configure() named one, or this is a forked
        worker (its own ``{pid}``)."""
        return self.template != template or self.pid != PROCESS.pid

    def _reopen_if_moved(self) -> None:
        """Reopen at the path when the file there is no longer the one held open."""
        try:
            status = os.stat(self.path)
            moved = (status.st_dev, status.st_ino) != self.identity
        except FileNotFoundError:
            moved = True
        except OSError:  # a path that cannot be looked at (/dev/full): keep the descriptor
            return
        if moved:
            old = self.file
            self.file = self._open()
            old.close()

    def write(self, lines: list[bytes]) -> Written:
        """Append ``lines`` (each ending with a newline) in one write; raise ``OSError``
        (with the count of lines lost in ``lost``) if the disk refused some."""
        if not lines:
            return Written(0, 0)
        self._reopen_if_moved()
        data = b"".join(lines)
        if self.torn:
            data = b"\n" + data
        view = memoryview(data)
        done = 0
        try:
            with _locked(self.file):
                while done < len(data):
                    written = self.file.write(view[done:])
                    if not written:  # a zero-length write: the device takes no more
                        raise OSError(28, os.strerror(28))
                    done += written
        except BaseException as error:
            # Everything up to the last whole line written is on disk; the rest is lost.
            if done:
                prefix = 1 if self.torn else 0  # the fresh-line newline, written first
                self.torn = data[done - 1 : done] != b"\n"
                whole = data.count(b"\n", 0, done) - prefix
            else:
                whole = 0
            error.lost = len(lines) - whole  # type: ignore[attr-defined]
            raise
        finally:
            del view
        self.torn = False
        return Written(len(lines), 0)

    def close(self) -> None:
        self.file.close()


@contextlib.contextmanager
def _locked(file: FileIO) -> Iterator[None]:
    """An exclusive ``flock`` on ``file`` while the block runs, where there is one (a
    file system that refuses it, or a descriptor that is no file, runs the block
    unlocked)."""
    locked = False
    fd = -1
    try:
        if _flock is not None:
            fd = file.fileno()
            _flock(fd, _LOCK_EX)
            locked = True
    except (AttributeError, OSError, ValueError):  # no descriptor, or no lock there
        locked = False
    try:
        yield
    finally:
        if locked and _flock is not None:
            with contextlib.suppress(OSError):
                _flock(fd, _LOCK_UN)


def _last_byte(path: str) -> bytes:
    with open(path, "rb") as file:
        file.seek(-1, os.SEEK_END)
        return file.read(1)


class ConsoleSink:
    """Readable lines on standard error, for people who want to watch calls scroll by."""

    template = "<console>"

    def stale(self, template: str) -> bool:
        return template != self.template

    def write(self, lines: list[bytes]) -> Written:
        stream = sys.stderr
        if stream is None:  # pythonw, or a daemon that closed it
            return Written(0, len(lines))
        stream.write("".join(line.decode() for line in lines))
        stream.flush()
        return Written(len(lines), 0)

    def close(self) -> None:
        pass
