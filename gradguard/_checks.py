"""Value checks shared by the per-target options (``_policy``) and the process settings
(``_config``).

A check takes the name to show in its message (an option, a ``configure()`` keyword or a
``GRADGUARD_*`` variable) and the value, and returns the value normalised or raises a
``TypeError``/``ValueError`` that names both and says what would do.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

__all__ = [
    "Check",
    "choice",
    "fraction",
    "needs_otel",
    "optional",
    "strict_flag",
    "text_flag",
    "unknown_option",
]

Check = Callable[[str, Any], Any]
T = TypeVar("T")


def strict_flag(name: str, value: Any) -> bool:
    """``True`` or ``False`` only: an option written in code."""
    if not isinstance(value, bool):
        msg = f"{name} must be True or False; got {value!r}"
        raise TypeError(msg)
    return value


def text_flag(name: str, value: Any) -> bool:
    """A bool, or the text of one (``1``/``0``, ``yes``/``no``, ``on``/``off``): a
    setting that may come from the environment."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off", ""):
        return False
    msg = f"{name} must be true or false (1/0, yes/no, on/off); got {value!r}"
    raise ValueError(msg)


def choice(name: str, value: Any, valid: tuple[T, ...] | dict[T, Any]) -> T:
    """One of ``valid`` (a tuple, or a dict's keys), unchanged."""
    if value not in valid:
        msg = f"{name} must be one of {', '.join(map(repr, valid))}; got {value!r}"
        raise ValueError(msg)
    return value  # type: ignore[no-any-return]


def fraction(name: str, value: Any) -> float:
    """A number in [0, 1] (or the text of one), as a float: a sampling rate."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not 0.0 <= number <= 1.0:
        msg = f"{name} must be a fraction between 0 and 1 (0.01 logs 1 call in 100); got {value!r}"
        raise ValueError(msg)
    return number


def needs_otel(name: str, on: bool) -> bool:
    """``on``, once a flag already checked; switching it on needs ``opentelemetry-api``."""
    if on:
        # Imported here: ``_telemetry``'s package imports ``_config``, which imports this.
        from ._telemetry._otel import available

        if not available():
            msg = (
                f"{name}=True records through OpenTelemetry, but opentelemetry-api is not "
                "installed; install it with `pip install gradguard[otel]`"
            )
            raise ValueError(msg)
    return on


def optional(check: Check) -> Check:
    """``check``, letting ``None`` through (``None``: as configured)."""

    def check_optional(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)

    return check_optional


def unknown_option(caller: str, key: str, valid: Iterable[str]) -> TypeError:
    """The error for a keyword ``caller()`` does not take: the closest valid name, if one
    is close, then every valid name."""
    names = sorted(valid)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return TypeError(f"{caller}() got an unknown option {key!r}{hint} Valid options: "
                     f"{', '.join(names)}.")  # fmt: skip
