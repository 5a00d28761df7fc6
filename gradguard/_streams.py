"""Writing the command line's output: to standard output or a file, whatever state the
standard streams are in (closed, full, a reader that went away)."""

from __future__ import annotations

import contextlib
import os
import sys

__all__ = ["deliver", "say", "silence_stdout", "write_file"]


def say(line: str) -> None:
    """Print ``line`` on standard error, if there is one to print on."""
    try:
        if sys.stderr is not None:
            print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass  # stderr is closed or full: the exit status is all that is left


def deliver(text: str, output: str | None) -> str | None:
    """Write the report to ``output`` or standard output; the problem, if it fails."""
    if output is not None:
        return write_file(text, output)
    stream = sys.stdout
    if stream is None or stream.closed:
        return "standard output is closed; give --output FILE, or leave stdout open"
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): it chose to stop reading; no error.
        silence_stdout()
    except OSError as exc:  # a full disk (/dev/full), a lost terminal
        silence_stdout()
        return (
            f"cannot write the report to standard output ({exc.strerror or exc}); "
            "free some space or write it elsewhere with --output FILE"
        )
    return None


def silence_stdout() -> None:
    # What is still buffered would fail again when Python flushes stdout at exit, with
    # a message of its own: point the descriptor at /dev/null first.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def write_file(text: str, output: str) -> str | None:
    if os.path.isdir(output):
        return f"--output {output!r} is a directory; name a file, e.g. {output}/report.html"
    # Written beside the target and renamed over it: a failed write leaves no half report.
    partial = f"{output}.partial"
    try:
        with open(partial, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(partial, output)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.remove(partial)
        return f"cannot write --output {output!r} ({exc.strerror or exc}); check the path"
    return None
