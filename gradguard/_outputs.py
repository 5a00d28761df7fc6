"""Walking the tensors in what a call returns: tuples, lists, dicts, dataclasses, ModelOutput."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = [
    "any_tensor",
    "clone_inference_tensors",
    "each_tensor",
    "map_tensors",
    "shallow_tensors",
]

_Tensor = torch.Tensor
_MAX_DEPTH = 32  # outputs nest a few levels; deeper structures are left as they are
# What holds no tensor, by exact type: a container of nothing else (``.tolist()``) is
# passed over in one C-level look.
_ATOMS = frozenset({int, float, bool, str, bytes, complex, type(None)})


def each_tensor(obj: Any, fn: Callable[[torch.Tensor], object], depth: int = 0) -> bool:
    """Call ``fn`` on every tensor inside ``obj`` until it returns true; return whether it did.

    The same walk as ``map_tensors`` (tuples, lists, dicts, dataclasses, ModelOutput)
    without building anything: for looking, not changing.
    """
    kind = type(obj)
    if kind in _ATOMS:
        return False
    if kind is not list and kind is not tuple:  # the common containers go straight on
        if isinstance(obj, _Tensor):
            return bool(fn(obj))
        if isinstance(obj, dict):
            obj = obj.values()
        elif not isinstance(obj, (tuple, list)):
            if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
                return False
            obj = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    if depth >= _MAX_DEPTH:
        return False
    depth += 1
    if _ATOMS.issuperset(map(type, obj)):  # all plain values, checked in C (.tolist())
        return False
    for item in obj:  # noqa: SIM110 - a plain loop: any() would build a generator
        if type(item) not in _ATOMS and each_tensor(item, fn, depth):
            return True
    return False


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor], depth: int = 0) -> Any:
    """Return ``obj`` with ``fn`` applied to every tensor inside it.

    Containers are rebuilt only where a tensor inside them changed, so an output with
    nothing to change comes back as the very same object.
    """
    if isinstance(obj, _Tensor):
        return fn(obj)
    if depth >= _MAX_DEPTH or isinstance(obj, (str, bytes, int, float, type(None))):
        return obj
    depth += 1
    if isinstance(obj, (tuple, list)):
        items = [map_tensors(item, fn, depth) for item in obj]
        if all(new is old for new, old in zip(items, obj, strict=True)):
            return obj
        if isinstance(obj, list):
            new_list = copy.copy(obj)
            new_list[:] = items
            return new_list
        try:
            if hasattr(obj, "_fields"):  # namedtuple
                return type(obj)(*items)
            return type(obj)(items)
        except TypeError:  # a tuple subclass built some other way: leave it as it is
            return obj
    if isinstance(obj, dict):
        changed = {}
        for key, value in obj.items():
            new = map_tensors(value, fn, depth)
            if new is not value:
                changed[key] = new
        if not changed:
            return obj
        new_dict = copy.copy(obj)  # keeps the class: OrderedDict, ModelOutput, ...
        for key, value in changed.items():
            new_dict[key] = value
        return new_dict
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {}
        for field in dataclasses.fields(obj):
            value = getattr(obj, field.name)
            new = map_tensors(value, fn, depth)
            if new is not value:
                changed[field.name] = new
        if not changed:
            return obj
        new_obj = copy.copy(obj)
        for name, value in changed.items():
            object.__setattr__(new_obj, name, value)  # frozen dataclasses too
        return new_obj
    return obj


def shallow_tensors(values: Any) -> Iterator[torch.Tensor]:
    """The tensors among ``values`` and one level into their lists, tuples and dicts.

    Where a call's inputs are looked at on every call (its device, a module's inputs),
    a full walk would cost more than it finds.
    """
    for value in values:
        if isinstance(value, _Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (item for item in value if isinstance(item, _Tensor))
        elif isinstance(value, dict):
            yield from (item for item in value.values() if isinstance(item, _Tensor))


def _clone_if_inference(tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.is_inference():
        return tensor
    with torch.inference_mode(False), torch.no_grad():
        return tensor.clone()


def clone_inference_tensors(obj: Any) -> Any:
    """Replace every inference tensor in ``obj`` by an ordinary copy (``outputs="clone"``)."""
    return map_tensors(obj, _clone_if_inference)


def any_tensor(obj: Any, predicate: Callable[[torch.Tensor], bool]) -> bool:
    """Whether ``predicate`` holds for some tensor inside ``obj``."""
    return each_tensor(obj, predicate)
