"""Provenance: which guarded call made an inference tensor, kept as long as its memory lives.

A guarded call's outputs are rarely used as they come back: ``teacher(x).detach()``,
``logits[..., :-1, :]``, ``out.view(-1, vocab)`` or ``.T`` of a temporary are new tensor
objects (and torch links no inference tensor to its base). What they share with the
output is the storage, so provenance is keyed on the storage object: a weak reference to
``tensor.untyped_storage()``, whose callback forgets the entry when the memory is freed.
torch keeps one Python object per storage while any tensor uses it, so the key is stable
for exactly as long as any view of the output lives (an address, ``data_ptr()``, is not:
the allocator hands it to the next tensor).

The registry and the global hooks' lifetime are one object, ``sentinel``: the hooks that
check module calls are in torch while it remembers anything, and out when it does not.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .._hooks import forward_hooks_always, forward_pre_hooks
from .._outputs import _ATOMS, each_tensor

__all__ = ["Origin", "Sentinel", "origin_of", "remember", "sentinel"]

_Tensor = torch.Tensor


class Origin(NamedTuple):
    """Which guarded call made a tensor, and under what name gradguard found it.

    ``name`` is empty for what a call returned; for a tensor found in a module it says
    where (``"attribute 'rotary._cos_cached'"``, ``"buffer '0.cos_cached'"``). ``until``
    is set when a look only knows the tensor came from one of calls ``call``-``until``.
    """

    target: str
    call: int
    name: str = ""
    until: int = 0

    def describe(self) -> str:
        """``teacher (call 1)``, or ``decoder (one of calls 3-7)``."""
        if self.until > self.call:
            return f"{self.target} (one of calls {self.call}-{self.until})"
        return f"{self.target} (call {self.call})"


def _holder(tensor: torch.Tensor) -> Any:
    """The object whose life is the memory's: the storage, or the tensor itself for
    sparse, nested and other tensors without one storage."""
    try:
        return tensor.untyped_storage()
    except Exception:
        return tensor


_Entry = tuple[weakref.ref[Any], Origin]  # a plain tuple: one is built per remembered tensor


class Sentinel:
    """The provenance registry and the lifetime of the global hooks that read it.

    ``origins`` maps the id of a storage (weakly held) to the call that made it. Tensors
    a call left in its modules as parameters or buffers are also in ``resident`` (by the
    tensor's id), which the forward pre-hook reads to warn before a module trains with
    them. The hooks are bound by the boundary module (``bind``) and installed while
    anything is remembered.
    """

    __slots__ = ("_after", "_before", "lock", "origins", "resident")

    def __init__(self) -> None:
        self.origins: dict[int, _Entry] = {}
        self.resident: dict[int, tuple[weakref.ref[torch.Tensor], Origin]] = {}
        # Reentrant: a weak reference's callback (forget) runs wherever the collector
        # frees a storage, which may be inside this lock, in this very thread.
        self.lock = threading.RLock()
        self._before: Callable[..., Any] | None = None
        self._after: Callable[..., Any] | None = None

    def bind(self, before: Callable[..., Any], after: Callable[..., Any]) -> None:
        """Set the forward pre-hook (own tensors about to train) and the always-called
        forward hook (torch's error, named) that this sentinel installs."""
        self._before, self._after = before, after

    # -- remembering ---------------------------------------------------------------------

    def note(self, tensor: torch.Tensor, origin: Origin) -> None:
        """Remember that ``origin`` made ``tensor`` (and every view of its storage)."""
        holder = _holder(tensor)
        key = id(holder)
        entry = (weakref.ref(holder, functools.partial(self.forget, key)), origin)
        with self.lock:
            self.origins[key] = entry
            if "leaks" not in forward_hooks_always.watchers and self._after is not None:
                forward_hooks_always.add("leaks", self._after)

    def note_resident(self, tensor: torch.Tensor, origin: Origin) -> None:
        """Remember a parameter or buffer a call left in a module.

        Only the forward pre-hook watches these: it warns before the module trains, where
        the failure is certain, so a model holding a call's leftovers does not also keep
        the always-called forward hook in every module call.
        """
        key = id(tensor)
        alive = weakref.ref(tensor, functools.partial(self.forget_resident, key))
        with self.lock:
            self.resident[key] = (alive, origin)
            if "leaks" not in forward_pre_hooks.watchers and self._before is not None:
                forward_pre_hooks.add("leaks", self._before)

    def origin_of(self, tensor: torch.Tensor) -> Origin | None:
        """Which guarded call made ``tensor``'s storage, or left it in a module, if that
        is remembered."""
        holder = _holder(tensor)
        entry = self.origins.get(id(holder))
        if entry is not None and entry[0]() is holder:
            return entry[1]
        return self.resident_origin(tensor) if self.resident else None

    def resident_origin(self, tensor: torch.Tensor) -> Origin | None:
        """The call that left ``tensor`` in a module, if it is a remembered resident."""
        entry = self.resident.get(id(tensor))
        if entry is not None and entry[0]() is tensor:
            return entry[1]
        return None

    def remembered(self) -> int:
        """How many storages are remembered now (for tests and the benchmark)."""
        return len(self.origins)

    # -- forgetting ----------------------------------------------------------------------

    def forget(self, key: int, ref: weakref.ref[Any]) -> None:
        # The hooks are not taken out here: a collection can run this callback while
        # torch copies its global hooks for a module call, and a change then would break
        # that call. They go at the next guarded call's start (``unhook_idle``) or at the
        # next module call that finds nothing to watch.
        with self.lock:
            entry = self.origins.get(key)
            if entry is not None and entry[0] is ref:
                del self.origins[key]

    def forget_resident(self, key: int, ref: weakref.ref[torch.Tensor]) -> None:
        with self.lock:
            entry = self.resident.get(key)
            if entry is not None and entry[0] is ref:
                del self.resident[key]

    def unhook_idle(self) -> None:
        """Take out the hooks nothing needs any more (from ordinary code only: never from
        a weak-reference callback, nor from a hook while torch's error propagates)."""
        pre = "leaks" in forward_pre_hooks.watchers
        always = "leaks" in forward_hooks_always.watchers
        if (not pre or self.resident) and (not always or self.origins):
            return  # the common cases decided without the lock: at every guarded call
        with self.lock:
            if pre and not self.resident:
                forward_pre_hooks.discard("leaks")
            if always and not self.origins:
                forward_hooks_always.discard("leaks")

    def hooked(self) -> bool:
        """Whether any of the sentinel's hooks is in torch now."""
        return "leaks" in forward_hooks_always.watchers or "leaks" in forward_pre_hooks.watchers

    def reset(self) -> None:
        """Forget everything and take the hooks out (for tests)."""
        with self.lock:
            self.origins.clear()
            self.resident.clear()
            forward_pre_hooks.discard("leaks")
            forward_hooks_always.discard("leaks")


sentinel = Sentinel()
origin_of = sentinel.origin_of


# Origin(target, call) without the generated __new__'s Python frame: on every call that
# returns an inference tensor.
_new_origin = functools.partial(tuple.__new__, Origin)


def remember(result: Any, target: str, call: int) -> None:
    """Note that ``target``'s ``call`` made the inference tensors inside ``result``."""
    kind = type(result)
    if kind is _Tensor:  # the common cases first, without walking anything
        if result.is_inference():
            sentinel.note(result, _new_origin((target, call, "", 0)))
        return
    if kind in _ATOMS:  # a label, a score: nothing to remember
        return
    origin: Origin = _new_origin((target, call, "", 0))
    note = sentinel.note

    def visit(tensor: torch.Tensor) -> bool:
        if tensor.is_inference():
            note(tensor, origin)
        return False  # walk on

    each_tensor(result, visit)
