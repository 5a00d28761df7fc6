"""Provenance for what a ``gradguard.scope`` block leaves behind.

A block returns nothing, so what it made is found where the block left it: the locals
of the frame the block is written in. At exit, every local that is new or rebound since
the block was entered, and one level into it (a tuple, a list, a dict), is looked at;
so are the items appended to a list that was there before, and the values changed in a
dict of up to ``_MAX_DICT`` entries. Inference tensors found there that no guarded call
inside the block made already are remembered as the block's, under the local's name.

What a block cannot be followed into: attributes of objects (``self.total = ...``),
globals of other modules, containers nested more than one level deep, and items that
replace others in a list without changing its length.
"""

from __future__ import annotations

from types import FrameType
from typing import Any, NamedTuple

import torch

from ._levels import remembering
from ._registry import Origin, origin_of, sentinel
from ._reports import internal_error

__all__ = ["LocalsBefore", "locals_before", "remember_locals"]

_Tensor = torch.Tensor
_MAX_DICT = 256  # a larger dict (a dataset index) is looked into for new keys only


class LocalsBefore(NamedTuple):
    """The frame a block runs in, and what its locals held when the block was entered."""

    frame: FrameType
    ids: dict[str, int]
    lengths: dict[str, int]  # lists: how long; dicts too large to snapshot: how many keys
    values: dict[str, frozenset[int]]  # small dicts: the ids of their values


def locals_before(frame: FrameType) -> LocalsBefore | None:
    """At a block's entry: what the locals of ``frame`` hold (``None`` when not remembering)."""
    if not remembering():
        return None
    ids: dict[str, int] = {}
    lengths: dict[str, int] = {}
    values: dict[str, frozenset[int]] = {}
    for name, value in frame.f_locals.items():
        ids[name] = id(value)
        if isinstance(value, list):
            lengths[name] = len(value)
        elif isinstance(value, dict):
            if len(value) <= _MAX_DICT:
                values[name] = frozenset(map(id, value.values()))
            else:
                lengths[name] = len(value)
    return LocalsBefore(frame, ids, lengths, values)


def _new_items(name: str, value: Any, before: LocalsBefore) -> Any:
    """The tensors ``value`` brings that the local ``name`` did not hold at the entry."""
    if before.ids.get(name) != id(value):  # new or rebound: itself and one level in
        if isinstance(value, _Tensor):
            return (value,)
        if isinstance(value, (list, tuple)):
            return value
        if isinstance(value, dict):
            return value.values()
        return ()
    if name in before.values:
        seen = before.values[name]
        return [item for item in value.values() if id(item) not in seen]
    if name in before.lengths:
        start = before.lengths[name]
        return value[start:] if isinstance(value, list) else list(value.values())[start:]
    return ()


def remember_locals(before: LocalsBefore, target: str, call: int) -> None:
    """At a block's exit: remember the inference tensors it left in its frame's locals."""
    note = sentinel.note
    try:
        for name, value in list(before.frame.f_locals.items()):
            for item in _new_items(name, value, before):
                if isinstance(item, _Tensor) and item.is_inference() and origin_of(item) is None:
                    note(item, Origin(target, call, f"local {name!r}"))
    except Exception as error:  # the block's own work is done: nothing may spoil its exit
        internal_error(error)
