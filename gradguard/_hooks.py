"""The one owner of torch's global module hooks.

A global forward hook costs every module call in the process, whoever it is for (about
1.5 µs a call here, just for being there). Several gradguard features want to see module
calls: the leak boundary, the eval net for models no static look finds, the scan for
unguarded inference. So each kind of global hook torch offers has one owner here, which
installs a single hook while any watcher needs it, takes it out when none does, and calls
the watchers in a fixed order (``ORDER``), the way torch keeps one dispatch path for many
modes.

With one watcher the watcher itself is installed, so it pays no dispatch; with several, a
small function calls each in turn. The hook is registered with torch once and then put
into torch's dict and taken out of it by key, which is cheaper than a new registration for
programs that need it only now and then.

A change to the watchers must not happen while torch copies its global hooks for a module
call (``_call_impl`` unpacks the dict, and a change in between breaks that call): a
watcher is added or removed from ordinary code, never from a weak-reference callback or a
finalizer, which the collector may run at any point.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = [
    "ORDER",
    "GlobalHook",
    "forward_hooks",
    "forward_hooks_always",
    "forward_pre_hooks",
]

# Who sees a module call first: the eval net switches a module to eval before its forward
# runs, so the watchers after it see the flag the call will run with.
ORDER: tuple[str, ...] = ("eval", "leaks", "scan")

Watcher = Callable[..., Any]


class GlobalHook:
    """One of torch's global module hooks, installed while any watcher needs it.

    ``register`` is torch's registration function (``register_module_forward_pre_hook``,
    say). Watchers are named; their names must be in ``order``, which fixes the order in
    which they run.
    """

    __slots__ = ("_extra", "_handle", "_lock", "_order", "_register", "watchers")

    def __init__(self, register: Callable[[Watcher], Any], order: tuple[str, ...] = ORDER):
        self._register = register
        self._order = order
        self._handle: Any = None  # torch's handle, kept after the first registration
        self._extra: list[dict[int, Any]] = []  # the handle's extra dicts (always_call)
        self._lock = threading.RLock()
        # The watchers installed now, by name: read without the lock (a dict lookup is
        # atomic under the GIL) by code that asks whether it is installed.
        self.watchers: dict[str, Watcher] = {}

    def add(self, name: str, watcher: Watcher) -> None:
        """Call ``watcher`` on every module call from now on (again, if it was removed)."""
        if name not in self._order:
            msg = f"unknown watcher {name!r}; known: {', '.join(self._order)}"
            raise ValueError(msg)
        if self.watchers.get(name) is watcher:  # installed: decided without the lock
            return
        with self._lock:
            if self.watchers.get(name) is watcher:
                return
            self.watchers = {**self.watchers, name: watcher}
            self._install()

    def discard(self, name: str) -> None:
        """Stop calling the watcher ``name``; take the hook out if no watcher is left."""
        if name not in self.watchers:  # out already: decided without the lock
            return
        with self._lock:
            if name not in self.watchers:
                return
            self.watchers = {k: v for k, v in self.watchers.items() if k != name}
            self._install()

    def installed(self) -> bool:
        """Whether the hook is in torch's dict now."""
        return bool(self.watchers)

    def owns(self, key: int) -> bool:
        """Whether the entry ``key`` of torch's hook dict is this owner's hook."""
        handle = self._handle
        return handle is not None and handle.id == key

    def reset(self) -> None:
        """Remove every watcher and the hook (for tests)."""
        with self._lock:
            self.watchers = {}
            self._install()

    def _install(self) -> None:
        watchers = self.watchers
        hook: Watcher | None
        if len(watchers) <= 1:  # the common case: one watcher, or none
            hook = next(iter(watchers.values()), None)
        else:
            hook = _dispatch(tuple(watchers[n] for n in self._order if n in watchers))
        handle = self._handle
        hooks = handle.hooks_dict_ref() if handle is not None else None
        if hook is None:
            if hooks is not None:
                hooks.pop(handle.id, None)
                # An always-called hook is also listed in torch's second dict, which
                # torch reads to decide whether any global hook is in (and then warns
                # when a compiled module is called): out of both, back into both.
                for extra in self._extra:
                    extra.pop(handle.id, None)
        elif hooks is None:
            self._handle = handle = self._register(hook)
            self._extra = _extra_dicts(handle)  # torch's module-level dicts: read once
        else:
            hooks[handle.id] = hook
            for extra in self._extra:
                extra[handle.id] = True


def _extra_dicts(handle: Any) -> list[dict[int, Any]]:
    """The extra dicts torch listed the hook in (``always_call``'s), still alive."""
    return [d for d in (ref() for ref in getattr(handle, "extra_dict_ref", ())) if d is not None]


def _dispatch(watchers: tuple[Watcher, ...]) -> Watcher:
    def dispatch(*args: Any) -> None:
        for watcher in watchers:
            watcher(*args)

    return dispatch


forward_pre_hooks = GlobalHook(nn.modules.module.register_module_forward_pre_hook)
forward_hooks = GlobalHook(nn.modules.module.register_module_forward_hook)
# Called also when the module's forward raises (``always_call``): the leak sentinel names
# the guarded call in torch's own error as it propagates out of a module call. torch calls
# these hooks on that path while iterating its dict, so a watcher must never be added or
# removed from inside one while an error propagates.
forward_hooks_always = GlobalHook(
    functools.partial(nn.modules.module.register_module_forward_hook, always_call=True)
)

OWNERS: tuple[GlobalHook, ...] = (forward_pre_hooks, forward_hooks, forward_hooks_always)


def owned(key: int) -> bool:
    """Whether the entry ``key`` of one of torch's global hook dicts is gradguard's (torch
    numbers every hook handle from one counter, so a key names one hook)."""
    return any(owner.owns(key) for owner in OWNERS)


def _after_fork_in_child() -> None:
    # A thread of the parent may have held a lock at the fork; it does not exist here.
    for owner in OWNERS:
        owner._lock = threading.RLock()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)
