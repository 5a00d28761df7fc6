"""Inference tensors given to modules, as torch's registration hooks report them.

A lazily built cache (``self.register_buffer("cos", ...)`` on the first forward), a
submodule replaced inside a guarded call, or a whole model built or loaded in one lands
as inference tensors, and the model's next training step fails. Each registration made
under inference mode is an entry; a call that sees ``landed.seq`` move between its start
and its end claims the entries its thread made meanwhile.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from ._reports import internal_error

__all__ = [
    "Found",
    "Landed",
    "TensorKind",
    "claim",
    "inference_tensors",
    "is_inference",
    "landed",
    "watch_registrations",
]

_Tensor = torch.Tensor
_inference_enabled = torch.is_inference_mode_enabled
_is_lazy = torch.nn.parameter.is_lazy
_MAX_LANDED = 4096  # registrations no guarded call claims (a model built outside one)

TensorKind = Literal["parameter", "buffer", "attribute"]


class Found(NamedTuple):
    """An inference tensor found in a module: its qualified name, its kind, the tensor."""

    name: str
    kind: TensorKind
    tensor: torch.Tensor

    def describe(self) -> str:
        """``buffer '0.cos_cached'``, ``attribute 'rotary._cos_cached'``."""
        return f"{self.kind} {self.name!r}"


FoundById = dict[int, Found]


class _Entry(NamedTuple):
    seq: int
    thread: int
    module: weakref.ref[nn.Module]
    name: str
    kind: str  # "parameter", "buffer" or "module"


class Landed:
    """The registrations made under inference mode, in order; ``seq`` counts them."""

    __slots__ = ("_handles", "entries", "lock", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.entries: list[_Entry] = []
        self.lock = threading.Lock()
        self._handles: list[Any] = []

    def reset(self) -> None:
        """Forget every entry (for tests); the registration hooks stay, they cost nothing
        outside inference mode."""
        with self.lock:
            self.entries = []

    def install(self) -> None:
        """Install the registration hooks (once, when the first target is made).

        torch runs them only when a module gets a parameter, buffer or submodule, never
        on a forward; outside inference mode they return at once.
        """
        if self._handles:
            return
        with self.lock:
            if not self._handles:
                register = nn.modules.module
                self._handles.extend(
                    [
                        register.register_module_parameter_registration_hook(
                            self._hook("parameter")
                        ),
                        register.register_module_buffer_registration_hook(self._hook("buffer")),
                        register.register_module_module_registration_hook(self._hook("module")),
                    ]
                )

    def _hook(self, kind: str) -> Any:
        def hook(module: nn.Module, name: str, value: Any) -> None:
            try:
                if value is None or not _inference_enabled():
                    return
                if kind != "module" and not is_inference(value):
                    return
                with self.lock:
                    self.seq += 1
                    entries = self.entries
                    entry = _Entry(self.seq, threading.get_ident(), weakref.ref(module), name, kind)
                    entries.append(entry)
                    if len(entries) > _MAX_LANDED:
                        del entries[: _MAX_LANDED // 2]
            except Exception as error:  # a registration must never fail because of gradguard
                internal_error(error)

        return hook


landed = Landed()
watch_registrations = landed.install


def is_inference(value: Any) -> bool:
    """Whether ``value`` is an initialised inference tensor (lazy parameters are neither)."""
    return isinstance(value, _Tensor) and not _is_lazy(value) and value.is_inference()


# What every module has in its __dict__ (its tables and hook dicts): not attributes of the
# user's; _parameters and _buffers are looked at as such.
_MODULE_KEYS = frozenset(vars(nn.Module()))


def _attribute_tensors(module: nn.Module, path: str, found: FoundById) -> None:
    """Inference tensors in ``module``'s plain attributes, one level into dicts and lists
    (a rotary ``_cos_cached``, a metric state set with setattr, a cache dict)."""
    for key, value in vars(module).items():
        if key in _MODULE_KEYS:
            continue
        if isinstance(value, _Tensor):
            if is_inference(value):
                found[id(value)] = Found(path + key, "attribute", value)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                if isinstance(item, _Tensor) and is_inference(item):
                    found[id(item)] = Found(f"{path}{key}[{index}]", "attribute", item)
        elif isinstance(value, dict):
            for name, item in value.items():
                if isinstance(item, _Tensor) and is_inference(item):
                    found[id(item)] = Found(f"{path}{key}[{name!r}]", "attribute", item)


def inference_tensors(root: nn.Module, prefix: str = "", *, attributes: bool = False) -> FoundById:
    """Every parameter and buffer below ``root`` that is an inference tensor, and with
    ``attributes`` every such tensor in the modules' plain attributes."""
    found: FoundById = {}
    for name, parameter in root.named_parameters():
        if is_inference(parameter):
            found[id(parameter)] = Found(prefix + name, "parameter", parameter)
    for name, buffer in root.named_buffers():
        if is_inference(buffer):
            found[id(buffer)] = Found(prefix + name, "buffer", buffer)
    if attributes:
        for name, module in root.named_modules():
            _attribute_tensors(module, f"{prefix}{name}." if name else prefix, found)
    return found


def prefix(roots: list[nn.Module], root: nn.Module) -> str:
    """How a tensor's name starts: nothing for a call's only model, its class otherwise."""
    return "" if len(roots) == 1 else f"{type(root).__name__}."


def _tops(entries: list[_Entry]) -> list[nn.Module]:
    """The outermost of the modules that got registrations: those no other one holds."""
    modules: dict[int, nn.Module] = {}
    children: set[int] = set()
    for entry in entries:
        module = entry.module()
        if module is None:
            continue
        modules[id(module)] = module
        if entry.kind == "module":
            child = module._modules.get(entry.name)
            if child is not None:
                children.add(id(child))
    return [m for key, m in modules.items() if key not in children]


def claim(roots: list[nn.Module], mark: int) -> tuple[FoundById, FoundById]:
    """The inference tensors registered by this thread since ``mark``: those in
    ``roots`` (the call's modules, and modules its result holds), and those in modules
    outside them that are still alive (a model the call built and stored).

    Entries whose module died (made and dropped inside the call) go without a walk.
    """
    thread = threading.get_ident()
    with landed.lock:
        mine = [e for e in landed.entries if e.seq > mark and e.thread == thread]
    if mine:
        taken = set(map(id, mine))
        with landed.lock:
            landed.entries = [e for e in landed.entries if id(e) not in taken]
    alive = [entry for entry in mine if entry.module() is not None]
    if not alive:
        return {}, {}
    rooted = _claim(alive, roots)
    where = {id(m) for root in roots for m in root.modules()}
    rest = [entry for entry in alive if id(entry.module()) not in where]
    built = _claim(rest, _tops(rest), named=True) if rest else {}
    return rooted, built


def _claim(entries: list[_Entry], roots: list[nn.Module], *, named: bool = False) -> FoundById:
    where: dict[int, str] = {}
    for root in roots:
        start = f"{type(root).__name__}." if named else prefix(roots, root)
        for name, module in root.named_modules():
            where.setdefault(id(module), f"{start}{name}" if name else start.rstrip("."))
    found: FoundById = {}
    for entry in entries:
        module = entry.module()
        path = where.get(id(module)) if module is not None else None
        if module is None or path is None:
            continue
        path = f"{path}.{entry.name}".lstrip(".")
        if entry.kind == "module":
            child = module._modules.get(entry.name)
            if child is not None:
                found.update(inference_tensors(child, path + "."))
            continue
        kind: TensorKind = "parameter" if entry.kind == "parameter" else "buffer"
        table: dict[str, Any] = module._parameters if kind == "parameter" else module._buffers
        value = table.get(entry.name)
        if value is not None and is_inference(value):
            found[id(value)] = Found(path, kind, value)
    return found
