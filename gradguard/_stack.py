"""Find the first frame outside gradguard, so warnings point at the user's line."""

from __future__ import annotations

import contextlib
import os
import sys

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# A warning about an error leaving a ``@contextmanager`` block (``watch_leaks``) is raised
# under contextlib's ``__exit__``, between gradguard's generator and the user's ``with``
# line: contextlib's frames are skipped too, so the warning lands on that line.
_CONTEXTLIB = os.path.abspath(contextlib.__file__)


def user_stacklevel(extra_dirs: tuple[str, ...] = ()) -> int:
    """Return the ``stacklevel`` for ``warnings.warn`` called by the caller of this function.

    Counts the frames that belong to gradguard, to contextlib (a block's ``__exit__``) and
    to ``extra_dirs`` (torch's, for a warning raised from a module hook), so the warning
    is reported at the first frame of user code however deep it was raised.
    """
    skipped = (_PACKAGE_DIR, _CONTEXTLIB, *extra_dirs)
    frame = sys._getframe(1)  # the function that will call warnings.warn
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(skipped):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def caller_name(depth: int) -> str:
    """Return ``module:qualname`` of the code ``depth`` frames above the caller."""
    frame = sys._getframe(depth + 1)
    code = frame.f_code
    qualname = getattr(code, "co_qualname", code.co_name)
    return f"{frame.f_globals.get('__name__', '?')}:{qualname}"
