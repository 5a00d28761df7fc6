"""Switching modules to eval for a call and giving every submodule its own flag back.

``Module.eval()``/``train()`` walk the tree through ``named_modules()`` and
``Module.__setattr__``; for a model with hundreds of submodules that is a millisecond.
Setting the flag with ``object.__setattr__`` writes the same instance attribute some
twenty times faster, so it is used for every class that does not override ``train()``
or ``eval()``; classes that do (to keep a BatchNorm frozen, say) get their override called.

Concurrent and nested calls share one registry, under one lock: a module switched by a
call is *held* with a count, every later call that finds it held adds to the count, and
the module gets its flag back when the last holder leaves. So threads calling the same
model never see it in training mode during their forward, and an inner call on a module
an outer call already switched switches nothing.
"""

from __future__ import annotations

import threading
from threading import get_ident

import wrapt
from torch import nn

__all__ = ["Hold", "hold", "release", "submodules"]

_Module = nn.Module
_Proxy = wrapt.ObjectProxy
_set_flag = object.__setattr__
# Reentrant: a class's own train()/eval(), called under the lock, may run guarded code.
_lock = threading.RLock()


class _Held:
    """A module this process switched to eval, and who still needs it there."""

    __slots__ = ("count", "flags", "module")

    def __init__(self, module: nn.Module) -> None:
        self.count = 1
        self.module = module
        # For classes with their own train(): the flags of the whole subtree before the
        # switch, since their train(True) on the way back resets every descendant.
        self.flags: list[tuple[nn.Module, bool]] | None = None


_held: dict[int, _Held] = {}
_override_cache: dict[type, bool] = {}


def _overrides(cls: type) -> bool:
    found = _override_cache.get(cls)
    if found is None:
        found = cls.train is not _Module.train or cls.eval is not _Module.eval  # type: ignore[attr-defined]
        _override_cache[cls] = found
    return found


def submodules(root: nn.Module) -> list[nn.Module]:
    """Return ``root`` and every module below it, each parent before its children.

    A gradguard proxy registered as a submodule (``nn.Sequential(gradguard.guard(m))``) is
    walked as the module it wraps: flags must be set on the module, not on the proxy.
    """
    found: list[nn.Module | None] = [root]
    for module in found:  # the list grows while it is walked: breadth first
        if module is not None:
            found.extend(module._modules.values())
    return [_unproxied(m) for m in found if m is not None]


def _unproxied(module: nn.Module) -> nn.Module:
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


def _switch_to_eval(module: nn.Module, entry: _Held) -> None:
    if _overrides(type(module)):
        entry.flags = [
            (m, m.training if id(m) not in _held else True) for m in submodules(module)[1:]
        ]
        module.eval()
    else:
        _set_flag(module, "training", False)


def _restore(entry: _Held) -> None:
    module = entry.module
    if entry.flags is None:
        _set_flag(module, "training", True)
        return
    module.train(True)
    for descendant, flag in entry.flags:
        # Descendants still held by another call stay in eval until it leaves.
        _set_flag(descendant, "training", flag and id(descendant) not in _held)


def _in_use_below(module: nn.Module) -> bool:
    """Whether a call in another thread is running on a part of ``module``.

    Everything a call holds lies below its roots, so the roots are enough to look at. In
    this thread, an outer call on a part is suspended while the inner one leaves, so the
    part's flag may change and come back before it runs again.
    """
    me = get_ident()
    for descendant in submodules(module)[1:]:
        threads = _in_use.get(id(descendant))
        if threads is not None and (len(threads) > 1 or me not in threads):
            return True
    return False


class Hold:
    """What one call switched and holds; give it back with ``release``."""

    __slots__ = ("roots", "switched", "taken", "thread")

    def __init__(self, roots: list[nn.Module]) -> None:
        self.roots = roots
        self.thread = get_ident()
        self.taken: list[_Held] = []
        self.switched = 0


# Roots of the calls running now, counted per thread: a class's own train(True) on the way
# back resets every descendant for a moment, so it waits while a call in another thread
# runs on a part of the module.
_in_use: dict[int, dict[int, int]] = {}
_deferred: list[_Held] = []


def hold(roots: list[nn.Module]) -> Hold:
    """Switch every training module below ``roots`` to eval; return the handle for ``release``.

    When nothing is in training mode and no other call holds anything (the common case of
    a model kept in eval) this costs one walk over the flags.
    """
    with _lock:
        handle = Hold(roots)
        thread = handle.thread
        for root in roots:
            threads = _in_use.setdefault(id(root), {})
            threads[thread] = threads.get(thread, 0) + 1
        if not _held and not _any_training(roots):
            return handle
        taken = handle.taken
        try:
            for root in roots:
                modules = submodules(root)
                # Read every flag first: a class's own eval() may switch its descendants.
                flags = [m.training for m in modules]
                for module, was_training in zip(modules, flags, strict=True):
                    key = id(module)
                    entry = _held.get(key)
                    if entry is not None:
                        if entry.count == 0 and entry in _deferred:  # in eval: take it back
                            _deferred.remove(entry)
                        entry.count += 1
                        taken.append(entry)
                    elif was_training:
                        entry = _held[key] = _Held(module)
                        taken.append(entry)
                        handle.switched += 1
                        _switch_to_eval(module, entry)
        except BaseException:
            _release_locked(handle)
            raise
        return handle


def _release_locked(handle: Hold) -> None:
    thread = handle.thread
    for root in handle.roots:
        key = id(root)
        threads = _in_use[key]
        count = threads[thread] - 1
        if count:
            threads[thread] = count
        elif len(threads) > 1:
            del threads[thread]
        else:
            del _in_use[key]
    done = []
    for entry in handle.taken:
        entry.count -= 1
        if entry.count == 0:
            done.append(entry)
    if not done and not _deferred:
        return
    # Parents before children: a parent's own train() must not undo a child's flag.
    errors: list[BaseException] = []
    for entry in [*_deferred, *done]:
        if entry.count:  # taken again meanwhile, by code a train() override ran
            continue
        if entry.flags is not None and _in_use_below(entry.module):
            if entry not in _deferred:
                _deferred.append(entry)
            continue
        if entry in _deferred:
            _deferred.remove(entry)
        _held.pop(id(entry.module), None)
        try:
            _restore(entry)
        except Exception as error:  # keep restoring the others, then report
            errors.append(error)
    if errors:
        raise errors[0]


def release(handle: Hold) -> None:
    """Give back what ``hold`` took: modules no other call holds get their flag back."""
    with _lock:
        _release_locked(handle)
