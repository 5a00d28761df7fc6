"""gradguard's own settings: ``gradguard.configure()`` and the ``GRADGUARD_*`` variables.

Nothing here touches the application's logging. With ``log_file`` events go to
gradguard's own JSON-lines file; with ``console`` to readable lines on standard error;
otherwise to ``structlog.get_logger("gradguard")`` once the application has configured
structlog, and nowhere while it has not (calls are still counted, see
``gradguard.stats()``). ``structlog.configure()`` is never called.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from ._checks import Check, choice, fraction, needs_otel, text_flag, unknown_option
from ._errors import TelemetryWarning
from ._stack import user_stacklevel

__all__ = ["Settings", "configure", "current", "reset"]

LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: dict[LogLevel, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40}
LeakLevel = Literal["off", "boundary", "strict"]
LEAK_LEVELS: tuple[LeakLevel, ...] = ("off", "boundary", "strict")


@dataclass(frozen=True)
class Settings:
    """The process-wide defaults; per-target options override them.

    Attributes:
        enabled: measure calls: count them into ``gradguard.stats()`` and emit a
            ``gradguard.call`` event per call where events go (``False``: neither).
        log_file: write events as JSON lines to this path (``{pid}`` and ``{rank}`` are
            filled in) instead of to ``structlog.get_logger("gradguard")``.
        console: write events as readable lines to standard error (when no
            ``log_file`` is set), to watch calls scroll by.
        otel: record each call's duration through OpenTelemetry's API
            (``gradguard.call.duration``; needs ``gradguard[otel]``).
        trace: one OpenTelemetry span per call (needs ``gradguard[otel]``).
        sample: fraction of calls that emit an event (counters count every call).
        seed: seed of the sampling, so the same calls are sampled run after run.
        level: the lowest level emitted: calls are ``"info"``, failed calls ``"error"``.
        leaks: the leak sentinel, process-wide: ``"off"`` or ``"boundary"`` (inference
            tensors made by guarded calls entering a module call that autograd records);
            ``"strict"`` is for blocks, with ``watch_leaks``.
    """

    enabled: bool = True
    log_file: str | None = None
    sample: float = 1.0
    seed: int | None = None
    level: LogLevel = "info"
    leaks: LeakLevel = "boundary"
    console: bool = False
    otel: bool = False
    trace: bool = False


def _otel(name: str, value: Any) -> bool:
    return needs_otel(name, text_flag(name, value))


def _log_level(name: str, value: Any) -> LogLevel:
    return choice(name, value, LOG_LEVELS)


def check_leak_level(name: str, value: Any, *, block: bool = False) -> LeakLevel:
    """Return ``value`` as a leak level, or raise naming ``name`` and the valid levels.

    ``"strict"`` checks every torch operation of the thread, so it is a block of code's
    setting (``watch_leaks(level="strict")``), not a process-wide one.
    """
    leak_level = choice(name, value, LEAK_LEVELS)
    if leak_level == "strict" and not block:
        msg = (
            f"{name}='strict' watches every torch operation of a thread, so it is set for a "
            "block: `with gradguard.watch_leaks(level='strict'):`; process-wide, use "
            "'boundary' or 'off'"
        )
        raise ValueError(msg)
    return leak_level


def _path(name: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, (str, os.PathLike)):
        msg = f"{name} must be a path or None; got {value!r}"
        raise TypeError(msg)
    return os.fspath(value)


def _seed(name: str, value: Any) -> int | None:
    if value is None or value == "":
        return None
    # An int, or a string of one (from the environment): 1.5 or True are not truncated.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    msg = f"{name} must be an integer or None (seed=1234); got {value!r}"
    raise ValueError(msg)


# What each setting accepts; a check is given the keyword or the variable for its message.
SETTING_CHECKS: dict[str, Check] = {
    "enabled": text_flag,
    "log_file": _path,
    "sample": fraction,
    "seed": _seed,
    "level": _log_level,
    "leaks": check_leak_level,
    "console": text_flag,
    "otel": _otel,
    "trace": _otel,
}
_ENV = {
    "enabled": "GRADGUARD_ENABLED",
    "log_file": "GRADGUARD_LOG_FILE",
    "sample": "GRADGUARD_SAMPLE",
    "seed": "GRADGUARD_SEED",
    "level": "GRADGUARD_LEVEL",
    "leaks": "GRADGUARD_LEAKS",
    "console": "GRADGUARD_CONSOLE",
    "otel": "GRADGUARD_OTEL",
    "trace": "GRADGUARD_TRACE",
}


def _from_environment() -> Settings:
    """The settings the ``GRADGUARD_*`` variables give.

    Read at the first guarded call, where an error would break inference: a bad value is
    reported with a ``TelemetryWarning`` and left out, so its default applies.
    """
    found = {}
    for key, variable in _ENV.items():
        value = os.environ.get(variable)
        if value is None:
            continue
        try:
            found[key] = SETTING_CHECKS[key](variable, value)
        except (TypeError, ValueError) as error:
            msg = f"gradguard: {error}; the variable is ignored until it is fixed"
            warnings.warn(msg, TelemetryWarning, stacklevel=user_stacklevel())
    return Settings(**found)


_lock = threading.Lock()
_current: Settings | None = None
# Called before the settings change (telemetry writes what it holds under the old ones).
before_change: list[Callable[[], None]] = []
_generation = 0  # bumped on every change, so per-target caches know to refresh


def current() -> Settings:
    """The settings in force: the environment's, then what ``configure`` changed."""
    global _current
    settings = _current
    if settings is None:
        with _lock:
            if _current is None:
                _current = _from_environment()
            settings = _current
    return settings


def generation() -> int:
    """A number that changes whenever the settings do."""
    return _generation


def configure(**options: Any) -> Settings:
    """Set gradguard's own telemetry settings for this process; return the new settings.

    Options: ``enabled`` (bool), ``log_file`` (path, may hold ``{pid}`` and ``{rank}``;
    ``None`` sends events to ``structlog.get_logger("gradguard")`` again, once the
    application configured structlog), ``console`` (bool: readable lines on standard
    error), ``sample`` (fraction of calls that emit an event), ``seed`` (makes sampling
    reproducible), ``level`` (``"info"`` or ``"error"`` for failed calls only),
    ``leaks`` (the leak sentinel's level: ``"off"``, ``"boundary"``, ``"strict"``),
    ``otel`` (bool: a duration histogram through OpenTelemetry) and ``trace`` (bool: an
    OpenTelemetry span per call). Options left out keep their value; the environment
    variables ``GRADGUARD_ENABLED``, ``GRADGUARD_LOG_FILE``, ``GRADGUARD_CONSOLE``,
    ``GRADGUARD_SAMPLE``, ``GRADGUARD_SEED``, ``GRADGUARD_LEVEL``, ``GRADGUARD_LEAKS``,
    ``GRADGUARD_OTEL`` and ``GRADGUARD_TRACE`` give the starting values. Per-target
    options (``sample=``, ``log=``) override these.

    Example::

        gradguard.configure(log_file="calls-{rank}.jsonl", sample=0.1)
    """
    global _current, _generation
    checked: dict[str, Any] = {}
    for key, value in options.items():
        check = SETTING_CHECKS.get(key)
        if check is None:
            raise unknown_option("configure", key, SETTING_CHECKS)
        checked[key] = check(key, value)
    for callback in before_change:
        callback()
    with _lock:
        base = _current if _current is not None else _from_environment()
        _current = replace(base, **checked)
        _generation += 1
        return _current


def changed() -> None:
    """Make every target read the settings again (after a fork, say)."""
    global _generation
    _generation += 1


def reset() -> None:
    """Forget ``configure()`` calls and read the environment again (for tests)."""
    global _current, _generation
    with _lock:
        _current = None
        _generation += 1
