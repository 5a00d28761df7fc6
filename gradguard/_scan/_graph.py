"""Graph accounting: what a forward saved for backward, and whether a backward used it.

While the outermost module call of a thread records a graph, torch's saved-tensor hooks
hand every tensor autograd saves to ``Graph.pack``. Its bytes are counted once per
storage, leaving out the call's inputs and the module's parameters and buffers (they
live on without the graph). The packed object stands in for the tensor in the graph:

- ``unpack`` runs when a backward (``.backward()``, ``torch.autograd.grad``, from any
  output or intermediate activation) needs a saved tensor: the graph was used;
- the packed object is freed with the graph node that holds it; when the last one goes
  and none was unpacked, the graph was freed unused, and the observation is posted.

The packed object holds ``tensor.detach()``, not the tensor, for tensors made by recorded
ops: a tensor saved as the output of its own node refers to that node through
``grad_fn``, and the node to the packed object, a cycle through C++ the collector cannot
see, which would never be freed. Leaves (parameters, inputs) have no ``grad_fn`` and are
kept as they are. With saved-tensor hooks torch no longer checks that a saved tensor was
not modified in place before the backward, so ``unpack`` does that check itself (the
detached tensor shares the version counter) and raises torch's error.

A backward may also reach the call's nodes without unpacking anything (a loss on an
output whose path only adds): a pre-hook on each output's node of a graph not yet used
sees it arrive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._outputs import each_tensor
from ._findings import Observation, Session

__all__ = ["Graph", "Packed"]

_Tensor = torch.Tensor


class Graph:
    """The graph one outermost module call recorded, and what it keeps alive."""

    __slots__ = (
        "_state", "bytes", "counted", "inputs", "labels", "live", "module", "open", "owner",
        "packed", "seen", "sessions", "used", "where",
    )  # fmt: skip

    def __init__(
        self,
        module: torch.nn.Module,
        inputs: set[int],
        sessions: tuple[Session, ...],
    ) -> None:
        self.module = ""  # the class's qualified name, filled in when it is needed
        self.owner: torch.nn.Module | None = module  # dropped when the call ends
        self.inputs = inputs  # storages of the call's input tensors
        self.sessions = sessions
        self.labels = tuple(s.label for s in sessions)  # the tests running the forward
        self.bytes = 0
        self.live = 0  # packed objects alive
        self.seen: set[int] = set()
        self.used = False
        self.open = True  # the call is still running
        self.counted = False  # counted in the sessions' ``pending``
        self.packed = False  # anything saved at all
        self.where = ""
        self._state: set[int] | None = None  # storages of the module's parameters, buffers

    def pack(self, tensor: _Tensor) -> Packed:
        self.live += 1
        self.packed = True
        if tensor.is_leaf:
            if not tensor.requires_grad:
                self._count(tensor, leaf=True)
            # else a parameter, or an input that requires grad: it lives on anyway
            return Packed(tensor, tensor._version, self)
        base = tensor._base
        if base is None or not base.is_leaf:
            self._count(tensor, leaf=False)
        elif not base.requires_grad:  # a view of a leaf: counted unless module state
            self._count(tensor, leaf=True)
        # else a view of a parameter (Linear's weight.t()): not counted
        # Made by a recorded op, it may refer back to the node saving it: detached.
        return Packed(tensor.detach(), tensor._version, self)

    def _count(self, tensor: _Tensor, *, leaf: bool) -> None:
        """Count the tensor's storage once, unless an input (or, for a leaf, the module's
        state: a tensor made by the forward and recorded is never a leaf)."""
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self.seen:
            return
        self.seen.add(key)
        if key not in self.inputs and not (leaf and self._is_state(key)):
            self.bytes += storage.nbytes()

    def _is_state(self, key: int) -> bool:
        """Whether the storage ``key`` is one of the module's parameters or buffers."""
        state = self._state
        if state is None:
            owner = self.owner
            state = self._state = set()
            if owner is not None:
                for t in (*owner.parameters(), *owner.buffers()):
                    state.add(t.untyped_storage().data_ptr())
        return key in state

    def close(self, where: Callable[[], str], module: str) -> None:
        """The call ended: name it, and report now if its graph is already gone unused."""
        self.open = False
        self.owner = None
        self._state = None
        if self.used or not self.packed:
            return  # used already, or nothing saved: no graph to speak of
        self.where = where()
        self.module = module
        if self.live == 0:
            self._post()
            return
        self.counted = True
        for s in self.sessions:
            s.alive[id(self)] = self

    def watch_outputs(self, result: Any) -> None:
        """A backward that reaches an output's node uses the graph, even if the nodes it
        goes through saved nothing (an addition)."""
        each_tensor(result, self._watch_output)

    def _watch_output(self, tensor: _Tensor) -> bool:
        node = tensor.grad_fn
        if node is not None:
            node.register_prehook(self._reached)
        return False  # go on to the next tensor

    def _reached(self, grad_outputs: Any) -> None:
        if not self.used:
            self.mark_used()

    def mark_used(self) -> None:
        self.used = True
        if self.counted:
            self.counted = False
            for s in self.sessions:
                s.alive.pop(id(self), None)

    def release(self) -> None:
        """A packed object was freed (from a finalizer: no locks, no hooks changed)."""
        self.live -= 1
        if self.live == 0 and not self.open and self.counted:
            self.conclude()

    def conclude(self) -> None:
        """Freed, or alive when the program ends: either way no backward used it."""
        self.counted = False
        for s in self.sessions:
            s.alive.pop(id(self), None)
        if not self.used:
            self._post()

    def _post(self) -> None:
        for session, label in zip(self.sessions, self.labels, strict=True):
            session.post(
                Observation("graph_unused", self.where, self.module, self.bytes, "", label)
            )


class Packed:
    """What the graph holds in place of a saved tensor."""

    __slots__ = ("graph", "tensor", "version")

    def __init__(self, tensor: _Tensor, version: int, graph: Graph) -> None:
        self.tensor = tensor
        self.version = version
        self.graph = graph

    def __del__(self) -> None:
        self.graph.release()


def unpack(packed: Any) -> _Tensor:
    """A backward needs the tensor: the graph is used. Checks what torch checks."""
    graph = packed.graph
    if not graph.used:
        graph.mark_used()
    tensor: _Tensor = packed.tensor
    if tensor._version != packed.version:
        msg = (
            "one of the variables needed for gradient computation has been modified by an "
            f"inplace operation: [{tensor.type()} {list(tensor.shape)}] is at version "
            f"{tensor._version}; expected version {packed.version} instead. (Reported by "
            "gradguard.scan, whose saved-tensor hooks stand in for torch's own check.)"
        )
        raise RuntimeError(msg)
    return tensor
