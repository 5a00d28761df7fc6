"""``modules="auto"``: the models a decorated function's code can reach without running it.

Decided once, at decoration time: which global names the code (its nested functions,
lambdas and comprehensions included) loads, which closure cells and default values it
has. Each call then reads those few names from the function's globals (a global may be
rebound after decoration), looks into the cells and defaults, and goes one level inside
whatever is not a module itself: the attributes of a plain object (``pipe.model`` of a
Hugging Face pipeline, ``predictor.model``), the values of a dict, the items of a list
or tuple. The same one-level look applies to the call's arguments; ``self``, the object
that owns a predictor's state, is looked at one level further, into the dicts, lists and
plain objects among its attributes (``self.models[lang]``, ``self.pipe.model``).

The walk is bounded, and what cannot hold a module (strings, numbers, tensors, functions,
classes, Python modules) is skipped on its type alone, remembered per type, so a call
with a 10,000-item batch list pays for one look at its first item.

What no static look can see (a helper in another module using its own global model, a
model built inside the call) is for the run-time net (``_net``).
"""

from __future__ import annotations

import builtins
import dis
import functools
import types
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
import wrapt
from torch import nn

from ._eval import unproxied

__all__ = ["BARREN", "ITEMS", "RELOOK", "Reach", "forget_barren", "look", "reach_of"]

_Module = nn.Module
_Proxy = wrapt.ObjectProxy

# How a value is looked at, decided once per type.
_SKIP, _MODULE, _PROXY, _DICT, _SEQUENCE, _OBJECT = range(6)
_CONTAINERS = (_DICT, _SEQUENCE, _OBJECT)  # what the look below self goes into
# Items or attributes looked at inside one container or object: enough for a dict of
# models or a predictor's attributes, and a bound on what a huge container costs.
ITEMS = 32

_OPAQUE: tuple[type, ...] = (
    str,
    bytes,
    bytearray,
    int,
    float,
    complex,
    bool,
    type(None),
    torch.Tensor,
    torch.device,
    torch.dtype,
    range,
    slice,
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    functools.partial,
    property,
    classmethod,
    staticmethod,
    memoryview,
    set,
    frozenset,
    Iterator,  # a generator or file: looking inside could consume or block
)
# Seeded with the types most values are, so their first look is a hit.
_kinds: dict[type, int] = {
    t: _SKIP for t in (str, bytes, int, float, bool, type(None), torch.Tensor, nn.Parameter)
}


def _kind_of(cls: type) -> int:
    kind = _kinds.get(cls)
    if kind is not None:
        return kind
    if issubclass(cls, _Module):
        kind = _MODULE
    elif issubclass(cls, _Proxy):  # a gradguard guard (a module), or another proxy
        kind = _PROXY
    elif issubclass(cls, _OPAQUE):
        kind = _SKIP
    elif issubclass(cls, dict):
        kind = _DICT
    elif issubclass(cls, (list, tuple)):
        kind = _SEQUENCE
    elif getattr(cls, "__dictoffset__", 0) or _slots(cls):
        kind = _OBJECT
    else:
        kind = _SKIP
    if len(_kinds) > 4096:  # classes made at run time: keep the memo bounded
        _kinds.clear()
    _kinds[cls] = kind
    return kind


_slot_names: dict[type, tuple[str, ...]] = {}


def _slots(cls: type) -> tuple[str, ...]:
    names = _slot_names.get(cls)
    if names is None:
        found: list[str] = []
        for klass in cls.__mro__:
            slots = klass.__dict__.get("__slots__", ())
            found.extend([slots] if isinstance(slots, str) else slots)
        names = _slot_names[cls] = tuple(n for n in found if n not in ("__dict__", "__weakref__"))
    return names




Labels = list[tuple[nn.Module, str]] | None


def _add(found: list[nn.Module], value: Any, labels: Labels, where: str) -> None:
    module = unproxied(value)
    found.append(module)
    if labels is not None:
        labels.append((module, where))


def look(
    found: list[nn.Module],
    value: Any,
    labels: Labels = None,
    where: str = "",
    *,
    deep: bool = False,
) -> None:
    """Add the modules ``value`` is or holds one level down to ``found``.

    ``labels``, when given, also gets each module with where it was found (for
    ``describe``); ``where`` names ``value``. ``deep`` (for ``self``) goes one level
    further: into the dicts, lists and plain objects among its attributes
    (``self.models[lang]``, ``self.pipe.model``), see ``_look_deeper``.
    """
    cls = type(value)
    kind = _kinds.get(cls)
    if kind is None:
        kind = _kind_of(cls)
    if kind == _SKIP:
        return
    if kind == _MODULE or (kind == _PROXY and isinstance(value, _Module)):
        _add(found, value, labels, where)
        return
    if kind == _PROXY:
        return
    if kind == _DICT:
        items: Any = islice(value.items(), ITEMS)
    elif kind == _SEQUENCE:
        if not value or _kinds.get(type(value[0])) == _SKIP:
            return  # a batch of strings or tensors: nothing else in it either
        items = enumerate(islice(value, ITEMS))
    else:
        attributes = getattr(value, "__dict__", None)
        items = islice(attributes.items(), ITEMS) if attributes else ()
        slots = _slot_names.get(cls)
        if slots is None:
            slots = _slots(cls)
        if slots:
            items = [*items, *((n, getattr(value, n, None)) for n in slots[:ITEMS])]
    for key, item in items:
        item_kind = _kinds.get(type(item))
        if item_kind == _SKIP:
            continue
        if item_kind is None:
            item_kind = _kind_of(type(item))
        if item_kind == _MODULE or (item_kind == _PROXY and isinstance(item, _Module)):
            if labels is None:
                found.append(unproxied(item))
            else:
                _add(found, item, labels, _inner(where, key, attribute=kind == _OBJECT))
        elif deep and item_kind in _CONTAINERS:
            inner = _inner(where, key, attribute=kind == _OBJECT) if labels is not None else ""
            _look_deeper(found, item, item_kind, labels, inner)


# Classes of plain objects found below ``self`` and looked into without finding a module,
# with how many times: past BARREN looks, an object of that class (a tokenizer, a config)
# is looked into only every RELOOK-th time, so a predictor holding one pays for it a few
# times, not per call, and a class that later holds a model (a holder filled lazily) is
# found again within RELOOK calls (the run-time net covers its watched calls meanwhile).
BARREN = 16
RELOOK = 64
_barren: dict[type, int] = {}


def _look_deeper(
    found: list[nn.Module], value: Any, kind: int, labels: Labels, where: str
) -> None:
    """One level inside an attribute of ``self`` that is a dict, list or plain object.

    A dict or list whose first item cannot hold a module (a vocabulary, a list of labels)
    is skipped on that item; a plain object's class, once barren (``BARREN``), on its type
    but every ``RELOOK``-th time.
    """
    if kind == _OBJECT:
        cls = type(value)
        misses = _barren.get(cls, 0)
        if misses >= BARREN:
            _barren[cls] = misses + 1
            if (misses + 1 - BARREN) % RELOOK:
                return
        before = len(found)
        look(found, value, labels, _nested(where))
        if len(found) > before:
            _barren.pop(cls, None)  # it holds models: looked into every time
        elif misses < BARREN:
            if len(_barren) > 4096:  # classes made at run time: keep the memo bounded
                _barren.clear()
            _barren[cls] = misses + 1
        return
    first = next(iter(value.values() if kind == _DICT else value), None)
    if first is None or _kinds.get(type(first)) == _SKIP:
        return
    look(found, value, labels, _nested(where))


def forget_barren() -> None:
    """Forget which classes held no module below ``self`` (for tests)."""
    _barren.clear()


def _nested(where: str) -> str:
    # "attribute 'self.models'" becomes "self 'self.models'": its items are then labelled
    # "item 'self.models['en']'", as items of self's own attributes are.
    _, _, name = where.partition(" ")
    return f"self {name}" if name else "self"


def _inner(where: str, key: Any, *, attribute: bool) -> str:
    # where is "global 'pipe'": the module at pipe.model is "attribute 'pipe.model' (global)"
    kind, _, name = where.partition(" ")
    name = name.strip("'") or kind
    path = f"{name}.{key}" if attribute else f"{name}[{key!r}]"
    source = "" if kind in ("self", "") else f" ({kind})"
    return f"{'attribute' if attribute else 'item'} {path!r}{source}"


def _global_names(code: types.CodeType) -> list[str]:
    """The global names ``code`` and the code nested in it load, in order, once each."""
    names: dict[str, None] = {}
    stack = [code]
    while stack:
        current = stack.pop()
        for instruction in dis.get_instructions(current):
            if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
                names[str(instruction.argval)] = None
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))
    return list(names)


def _static(value: Any) -> bool:
    """Whether a global bound to ``value`` at decoration time is code, not data.

    Imported Python modules, functions and classes are not looked up on each call.
    """
    return isinstance(
        value, (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)
    ) or (isinstance(value, _Proxy) and not isinstance(value, _Module))


class Reach:
    """Where a function's code can find modules: global names, closure cells, defaults."""

    __slots__ = ("cells", "defaults", "globals", "names")

    def __init__(
        self,
        globals_: dict[str, Any],
        names: tuple[str, ...],
        cells: tuple[tuple[str, Any], ...],
        defaults: tuple[tuple[str, Any], ...],
    ) -> None:
        self.globals = globals_
        self.names = names
        self.cells = cells
        self.defaults = defaults

    def __bool__(self) -> bool:
        return bool(self.names or self.cells or self.defaults)

    def find(self, found: list[nn.Module], labels: Labels = None) -> None:
        """Add the modules reachable now to ``found``."""
        get = self.globals.get
        for name in self.names:
            value = get(name)
            if value is not None:
                look(found, value, labels, f"global {name!r}" if labels is not None else "")
        for name, cell in self.cells:
            try:
                value = cell.cell_contents
            except ValueError:  # not bound yet
                continue
            look(found, value, labels, f"closure {name!r}" if labels is not None else "")
        for name, value in self.defaults:
            look(found, value, labels, f"default {name!r}" if labels is not None else "")


def reach_of(func: Any) -> Reach | None:
    """Decide, once, what ``func``'s calls look at; ``None`` if it is not Python code."""
    code = getattr(func, "__code__", None)
    globals_ = getattr(func, "__globals__", None)
    if not isinstance(code, types.CodeType) or not isinstance(globals_, dict):
        return None
    names = []
    for name in _global_names(code):
        if name in globals_:
            if _static(globals_[name]):
                continue
        elif hasattr(builtins, name):
            continue
        names.append(name)
    cells: list[tuple[str, Any]] = []
    for name, cell in zip(code.co_freevars, func.__closure__ or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:
            cells.append((name, cell))  # bound later, in the enclosing function
            continue
        if not _static(value) and not isinstance(value, _OPAQUE):
            cells.append((name, cell))
    defaults: list[tuple[str, Any]] = []
    positional = code.co_varnames[: code.co_argcount]
    for name, value in zip(positional[::-1], (func.__defaults__ or ())[::-1], strict=False):
        if not isinstance(value, _OPAQUE):
            defaults.append((name, value))
    for name, value in (func.__kwdefaults__ or {}).items():
        if not isinstance(value, _OPAQUE):
            defaults.append((name, value))
    reach = Reach(globals_, tuple(names), tuple(cells), tuple(defaults[::-1]))
    return reach if reach else None


def find_in_values(
    found: list[nn.Module], values: Any, labels: Labels, where: Callable[[Any], str]
) -> None:
    """Look at each of ``values`` (arguments): modules, and modules one level inside."""
    for key, value in values:
        look(found, value, labels, where(key) if labels is not None else "")
