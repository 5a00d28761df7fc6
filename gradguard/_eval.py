"""Switching modules to eval for a call and giving every submodule its own flag back.

``Module.eval()``/``train()`` walk the tree through ``named_modules()`` and
``Module.__setattr__``; for a model with hundreds of submodules that is a millisecond.
Setting the flag with ``object.__setattr__`` writes the same instance attribute some
twenty times faster, so it is used for every class that does not override ``train()``
or ``eval()``; classes that do (to keep a BatchNorm frozen, say) get their override called.

Concurrent and nested calls share one registry (``registry``), under one lock: a module
switched by a call is *held* with a count, every later call that finds it held adds to
the count, and the module gets its flag back when the last holder leaves. So threads
calling the same model never see it in training mode during their forward, and an inner
call on a module an outer call already switched switches nothing.

An interrupt (``KeyboardInterrupt`` from Ctrl-C, or any signal handler that raises) can
land between any two steps here. So every change is recorded before it is made (a
handle lists an entry before the entry joins the registry, an entry joins before its
module's flag changes) and every step of ``release`` is idempotent: a release stopped
part way is simply run again, which finishes what is left. Pure Python cannot mask
signals cheaply (``pthread_sigmask`` costs more than a whole guarded call); a single
interrupt, wherever it lands, leaves flags and registry as they were before the call.

After ``os.fork()`` the child has only the forking thread: the holds of the parent's
other threads are released in the child (an at-fork handler, as the stdlib ``logging``
module has for its locks), so each module has the flag it would have once their calls
ended, and the lock is new, so nothing waits for a thread that does not exist.
"""

from __future__ import annotations

import os
import threading
from threading import get_ident
from typing import Any

import wrapt
from torch import nn

__all__ = [
    "Hold",
    "Registry",
    "hold",
    "registry",
    "release",
    "reset",
    "submodules",
    "take",
    "unproxied",
]

_Module = nn.Module
_Proxy = wrapt.ObjectProxy
_set_flag = object.__setattr__


class _Held:
    """A module this process switched to eval, and the calls that still need it there."""

    __slots__ = ("flags", "holders", "module")

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        # The handles holding it: a set, so that adding or removing one twice (a release
        # run again after an interrupt) changes nothing.
        self.holders: set[Hold] = set()
        # For classes with their own train(): the flags of the whole subtree before the
        # switch, since their train(True) on the way back resets every descendant.
        self.flags: list[tuple[nn.Module, bool]] | None = None


def submodules(root: nn.Module) -> list[nn.Module]:
    """Return ``root`` and every module below it, each parent before its children.

    A gradguard proxy registered as a submodule (``nn.Sequential(gradguard.guard(m))``) is
    walked as the module it wraps: flags must be set on the module, not on the proxy.
    """
    found: list[nn.Module | None] = [root]
    for module in found:  # the list grows while it is walked: breadth first
        if module is not None:
            found.extend(module._modules.values())
    return [unproxied(m) for m in found if m is not None]


def unproxied(module: Any) -> Any:
    """The module a gradguard proxy (or any wrapt proxy) wraps: flags must be set on the
    module itself, since setting one on the proxy would land on the proxy."""
    while isinstance(module, _Proxy):
        module = module.__wrapped__
    return module


def _any_training(roots: list[nn.Module]) -> bool:
    found: list[nn.Module | None] = list(roots)
    for module in found:
        if module is not None:
            if module.training:
                return True
            found.extend(module._modules.values())
    return False


class Hold:
    """What one call switched and holds; fill it with ``take``, give it back with ``release``.

    Made before anything changes, so that the caller has it in hand (in a variable its
    ``finally`` releases) before the first change: ``hold()`` does both for callers that
    need no such care.
    """

    __slots__ = ("released", "roots", "switched", "taken", "thread")

    def __init__(self, roots: list[nn.Module]) -> None:
        self.roots = roots
        self.thread = get_ident()
        self.taken: list[_Held] = []
        self.switched = 0
        self.released = False  # set once release() has finished


class Registry:
    """The modules this process holds in eval and the calls running on them, under one lock.

    One per process (``registry``); the module's ``take``, ``hold``, ``release`` and
    ``reset`` are its methods. Slotted: the call path reads its attributes as cheaply as
    it would read globals.
    """

    __slots__ = ("deferred", "held", "in_use", "lock", "override_cache")

    def __init__(self) -> None:
        # Reentrant: a class's own train()/eval(), called under the lock, may run guarded
        # code. Replaced in a forked child (``after_fork_in_child``).
        self.lock = threading.RLock()
        # The modules switched to eval and still held, by id.
        self.held: dict[int, _Held] = {}
        # The calls running now on each root, as their handles: a class's own train(True)
        # on the way back resets every descendant for a moment, so it waits while a call
        # in another thread runs on a part of the module.
        self.in_use: dict[int, set[Hold]] = {}
        # Held modules no call holds any more whose restore waits for such a call to end.
        self.deferred: list[_Held] = []
        # Whether a class overrides train() or eval(): a fact of the class, kept across
        # reset().
        self.override_cache: dict[type, bool] = {}

    def idle(self) -> bool:
        """Whether nothing is held, no call is running and no restore waits."""
        return not self.held and not self.in_use and not self.deferred

    def _overrides(self, cls: type) -> bool:
        found = cls.train is not _Module.train or cls.eval is not _Module.eval  # type: ignore[attr-defined]
        self.override_cache[cls] = found
        return found

    def _switch_to_eval(self, module: nn.Module, entry: _Held) -> None:
        cls = type(module)
        overrides = self.override_cache.get(cls)
        if overrides is None:  # a class seen for the first time
            overrides = self._overrides(cls)
        if overrides and module.training:
            held = self.held
            # Recorded before eval() runs: interrupted in between, the restore still knows.
            entry.flags = [
                (m, m.training if id(m) not in held else True) for m in submodules(module)[1:]
            ]
            module.eval()
        else:
            # A class with its own eval() that is in eval already was switched, its own
            # eval() included, by an ancestor's eval() in this same take (a Hugging Face
            # model inside another): calling it again would walk its subtree once more per
            # level. Its flag is given back directly, its subtree by that ancestor.
            _set_flag(module, "training", False)

    def _restore(self, entry: _Held) -> None:
        module = entry.module
        if entry.flags is None:
            _set_flag(module, "training", True)
            return
        module.train(True)
        held = self.held
        for descendant, flag in entry.flags:
            # Descendants still held by another call stay in eval until it leaves.
            _set_flag(descendant, "training", flag and id(descendant) not in held)

    def _in_use_below(self, module: nn.Module) -> bool:
        """Whether a call in another thread is running on a part of ``module``.

        Everything a call holds lies below its roots, so the roots are enough to look at.
        In this thread, an outer call on a part is suspended while the inner one leaves,
        so the part's flag may change and come back before it runs again.
        """
        me = get_ident()
        in_use = self.in_use
        for descendant in submodules(module)[1:]:
            users = in_use.get(id(descendant))
            if users and any(user.thread != me for user in users):
                return True
        return False

    def take(self, handle: Hold) -> None:
        """Switch every training module below ``handle.roots`` to eval, recording it in
        ``handle``.

        When nothing is in training mode and no other call holds anything (the common case
        of a model kept in eval) this costs one walk over the flags. Interrupted part way,
        what it did is in ``handle``: ``release(handle)`` undoes exactly that.
        """
        with self.lock:
            roots = handle.roots
            for root in roots:  # one root, mostly: no local binding pays for itself here
                users = self.in_use.get(id(root))
                if users is None:
                    users = self.in_use[id(root)] = set()
                users.add(handle)
            if not self.held and not _any_training(roots):
                return
            held = self.held
            deferred = self.deferred
            taken = handle.taken
            for root in roots:
                modules = submodules(root)
                # Read every flag first: a class's own eval() may switch its descendants.
                flags = [m.training for m in modules]
                for module, was_training in zip(modules, flags, strict=True):
                    key = id(module)
                    entry = held.get(key)
                    if entry is not None:
                        if handle not in entry.holders:
                            taken.append(entry)
                            entry.holders.add(handle)
                        if entry in deferred:  # in eval, waiting for its restore: keep it
                            deferred.remove(entry)
                    elif was_training:
                        entry = _Held(module)
                        taken.append(entry)  # recorded first, then registered, then switched
                        entry.holders.add(handle)
                        held[key] = entry
                        handle.switched += 1
                        self._switch_to_eval(module, entry)

    def hold(self, roots: list[nn.Module]) -> Hold:
        """Switch every training module below ``roots`` to eval; return the handle for
        ``release``."""
        handle = Hold(roots)
        try:
            self.take(handle)
        except BaseException:
            self.release(handle)
            raise
        return handle

    def _release_locked(self, handle: Hold) -> None:
        # Every step is idempotent: run again after an interrupt, it finishes what is left.
        for root in handle.roots:
            key = id(root)
            users = self.in_use.get(key)
            if users is not None:
                users.discard(handle)
                if not users:
                    del self.in_use[key]
        done = []
        for entry in handle.taken:
            entry.holders.discard(handle)
            if not entry.holders:
                done.append(entry)
        if not done and not self.deferred:
            return
        held = self.held
        deferred = self.deferred
        # Parents before children: a parent's own train() must not undo a child's flag.
        errors: list[BaseException] = []
        for entry in [*deferred, *done]:
            if entry.holders:  # taken again meanwhile, by code a train() override ran
                continue
            key = id(entry.module)
            if held.get(key) is not entry:  # restored already, or never registered
                if entry in deferred:
                    deferred.remove(entry)
                continue
            if entry.flags is not None and self._in_use_below(entry.module):
                if entry not in deferred:
                    deferred.append(entry)
                continue
            try:
                self._restore(entry)  # the flag first, then out of the registry: see the docstring
            except Exception as error:  # keep restoring the others, then report
                errors.append(error)
            if held.get(key) is entry:
                del held[key]
            if entry in deferred:
                deferred.remove(entry)
        if errors:
            raise errors[0]

    def release(self, handle: Hold) -> None:
        """Give back what ``take`` took: modules no other call holds get their flag back.

        Safe to call twice, and on a handle ``take`` filled only in part.
        """
        try:
            with self.lock:
                self._release_locked(handle)
        except BaseException:
            # Stopped part way (an interrupt, or an override's train() failing): every step
            # is idempotent, so running it again finishes the rest; then the error goes on.
            with self.lock:
                self._release_locked(handle)
            handle.released = True
            raise
        handle.released = True

    def reset(self) -> None:
        """Give back every hold of every thread and forget them (for tests)."""
        with self.lock:
            for handle in {h for users in self.in_use.values() for h in users}:
                self._release_locked(handle)
            self.held.clear()
            self.in_use.clear()
            self.deferred.clear()

    def after_fork_in_child(self) -> None:
        """In a forked child, end the holds of the parent's other threads, which are gone."""
        self.lock = threading.RLock()  # whoever held the parent's lock does not exist here
        me = get_ident()
        gone = {h for users in self.in_use.values() for h in users if h.thread != me}
        gone.update(h for entry in self.held.values() for h in entry.holders if h.thread != me)
        for handle in gone:
            try:
                self._release_locked(handle)
            except Exception:  # an override failing in the child: the others still go back
                continue
        if self.deferred:  # restores that waited for the threads just ended
            self._release_locked(Hold([]))


registry = Registry()
# The module's functions, as other modules call them: bound once, so a call costs what a
# call of a plain function does.
take = registry.take
hold = registry.hold
release = registry.release
reset = registry.reset

if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    # Taken before the fork, so the child never copies the registry half-changed. The
    # lock is read at each fork: a forked child replaces it.
    os.register_at_fork(
        before=lambda: registry.lock.acquire(),
        after_in_parent=lambda: registry.lock.release(),
        after_in_child=registry.after_fork_in_child,
    )
